"""`GET /metrics`: parsed with prometheus-client's own parser, its counters match what the batches report."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ServeFactory, Server

CHAT = "/v1/chat/completions"
KEY_LABELS = {"api_key", "key", "owner", "tenant", "user"}


def _line(cid: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {cid}"}], **body},
    }


def _run(client: openai.OpenAI, lines: list[dict[str, Any]], timeout: float = 20.0) -> tuple[Any, int]:
    data = b"".join(json.dumps(ln).encode() + b"\n" for ln in lines)
    f = client.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + timeout
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {b.status}"
        time.sleep(0.05)
        b = client.batches.retrieve(b.id)
    return b, len(data)


def scrape(srv: Server, api_key: str | None = "sk-test") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one /metrics scrape."""
    r = srv.http(api_key).get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            assert not KEY_LABELS & set(s.labels), f"{s.name} has a tenant label: {s.labels}"
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_batch_counters_match_the_batch_exactly(server: Server) -> None:
    client = server.client()
    lines = [_line(f"ok{i}") for i in range(37)] + [_line("bad1", echo_fail=400), _line("bad2", echo_fail=503)]
    b, nbytes = _run(client, lines)
    assert b.status == "completed" and b.request_counts is not None and b.usage is not None
    m = scrape(server)
    batch = {"mode": "batch", "endpoint": CHAT, "model": "gpt-4o-mini"}
    assert _get(m, "coldbatch_requests_total", **batch, outcome="completed") == b.request_counts.completed == 37
    assert _get(m, "coldbatch_requests_total", **batch, outcome="failed") == b.request_counts.failed == 2
    assert _get(m, "coldbatch_tokens_total", **batch, type="input") == b.usage.input_tokens > 0
    assert _get(m, "coldbatch_tokens_total", **batch, type="output") == b.usage.output_tokens > 0
    assert _get(m, "coldbatch_batches", status="completed") == 1
    assert _get(m, "coldbatch_batches", status="in_progress") == 0
    assert _get(m, "coldbatch_batch_duration_seconds_count", status="completed") == 1
    assert _get(m, "coldbatch_batch_duration_seconds_bucket", status="completed", le="+Inf") == 1
    assert _get(m, "coldbatch_uploaded_bytes_total", purpose="batch") == nbytes
    assert _get(m, "coldbatch_uploaded_files_total", purpose="batch") == 1
    # a slot is asked once per chunk of batch requests, never per request
    assert 1 <= _get(m, "coldbatch_queue_wait_seconds_count", queue="cold") <= len(lines)
    assert _get(m, "coldbatch_queue_waiting", queue="hot") == 0


def test_sync_requests_are_counted_by_outcome(server: Server) -> None:
    http = server.http()
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    assert http.post(CHAT, json=body).status_code == 200
    assert http.post(CHAT, json={**body, "echo_fail": 429}).status_code == 429
    m = scrape(server)
    sync = {"mode": "sync", "endpoint": CHAT, "model": "m1"}
    assert _get(m, "coldbatch_requests_total", **sync, outcome="completed") == 1
    assert _get(m, "coldbatch_requests_total", **sync, outcome="failed") == 1
    assert _get(m, "coldbatch_tokens_total", **sync, type="input") > 0
    assert _get(m, "coldbatch_sync_request_duration_seconds_count", endpoint=CHAT, model="m1", outcome="completed") == 1
    assert _get(m, "coldbatch_queue_wait_seconds_count", queue="hot") == 2


def test_engine_workers_are_reported(serve: ServeFactory) -> None:
    from coldbatch.engines.pool import open_engine

    srv = serve(engine=open_engine("echo", workers=1))
    m = scrape(srv)
    assert _get(m, "coldbatch_engine_workers") == 1
    assert _get(m, "coldbatch_engine_workers_live") == 1
    assert _get(m, "coldbatch_engine_worker_restarts_total") == 0
    assert _get(m, "coldbatch_engine_worker_crashes_total") == 0


@pytest.mark.parametrize("key", [None, "sk-other"])
def test_metrics_need_a_key_when_the_server_has_keys(serve: ServeFactory, key: str | None) -> None:
    srv = serve(api_keys=["sk-test"])
    assert srv.http(key).get("/metrics").status_code == 401
    assert scrape(srv, "sk-test")


def test_each_app_has_its_own_registry(serve: ServeFactory) -> None:
    a, b = serve(), serve()
    _run(a.client(), [_line("x")])
    assert _get(scrape(a), "coldbatch_batches", status="completed") == 1
    assert _get(scrape(b), "coldbatch_batches", status="completed") == 0


def test_counters_stay_exact_while_batches_settle(serve: ServeFactory) -> None:
    """Terminal batches are summed once and cached: scrapes between batches (and while one still runs) must
    still add up to exactly what the batches report."""
    from coldbatch.engines.echo import EchoEngine

    srv = serve(engine=EchoEngine(latency=0.05, max_concurrency=2))
    client = srv.client()
    _, bytes1 = _run(client, [_line(f"a{i}") for i in range(5)])
    scrape(srv)
    data = b"".join(json.dumps(_line(f"b{i}")).encode() + b"\n" for i in range(20))
    f = client.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
    running = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    mid = scrape(srv)  # the second batch is validating or running: it is read live, not cached
    assert _get(mid, "coldbatch_batches", status="completed") == 1
    deadline = time.monotonic() + 20
    while client.batches.retrieve(running.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _, bytes3 = _run(client, [_line("c", echo_fail=500)])
    m = scrape(srv)
    batch = {"mode": "batch", "endpoint": CHAT, "model": "gpt-4o-mini"}
    assert _get(m, "coldbatch_requests_total", **batch, outcome="completed") == 25
    assert _get(m, "coldbatch_requests_total", **batch, outcome="failed") == 1
    assert _get(m, "coldbatch_batches", status="completed") == 3
    assert _get(m, "coldbatch_batch_duration_seconds_count", status="completed") == 3
    assert _get(m, "coldbatch_uploaded_bytes_total", purpose="batch") == bytes1 + len(data) + bytes3
    again = scrape(srv)  # a second scrape reads the same from the cache
    assert _get(again, "coldbatch_requests_total", **batch, outcome="completed") == 25
