"""The relay engine: `coldbatch serve --engine relay --upstream URL` turns a sync API into a Batch API.

The upstream is `coldbatch.testing.upstream` on 127.0.0.1 (10 % injected 500s); the coldbatch server is
the real `create_app` under uvicorn in a thread, and once the real CLI as a subprocess. Per-line
upstream errors (a 400, and a 503 that stays 503 through every retry) must land in the batch's error
file with the upstream's status and body, everything else in the output file, each line once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from coldbatch.engines import registry
from coldbatch.engines.relay import RelayEngine
from coldbatch.errors import ConfigError
from coldbatch.server.app import create_app
from coldbatch.server.app_types import ServerSettings
from coldbatch.server.executor import ExecutorConfig
from coldbatch.testing.upstream import UpstreamServer, create_upstream

pytestmark = pytest.mark.slow
ATTEMPTS = 4


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer(create_upstream(rpm=6000, tpm=10_000_000, error_rate=0.1, latency=0.01, seed=5))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def relay_server(upstream: UpstreamServer, tmp_path: Path) -> Iterator[UpstreamServer]:
    engine = RelayEngine(upstream.url + "/v1", rpm=6000, max_attempts=ATTEMPTS, concurrency=16)
    settings = ServerSettings(
        data_dir=tmp_path / "relay",
        allow_short_windows=True,
        executor=ExecutorConfig(poll_seconds=0.05, flush_seconds=0.05),
    )
    server = UpstreamServer(create_app(settings, engine), lifespan="on")
    server.start()
    yield server
    server.stop()


def line(i: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": f"line {i}"}],
    }
    if i % 10 == 3:
        body["echo_fail"] = 400  # the upstream refuses it: no retry
    elif i % 10 == 7:
        body["echo_fail"] = 503  # the upstream fails it every time: retried, then reported
    return {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def body_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def jsonl(raw: bytes) -> dict[str, dict[str, Any]]:
    rows = [orjson.loads(x) for x in raw.splitlines() if x.strip()]
    out = {r["custom_id"]: r for r in rows}
    assert len(out) == len(rows), "a custom_id appears twice"
    return out


def run_batch(http: httpx.Client, lines: list[dict[str, Any]]) -> dict[str, Any]:
    data = b"".join(orjson.dumps(x) + b"\n" for x in lines)
    f = http.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data, "application/jsonl")})
    assert f.status_code == 200, f.text
    b = http.post(
        "/v1/batches",
        json={"input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    assert b.status_code == 200, b.text
    deadline = time.monotonic() + 30
    while (batch := http.get(f"/v1/batches/{b.json()['id']}").json())["status"] not in {
        "completed",
        "failed",
        "expired",
        "cancelled",
    }:
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return dict(batch)


def test_a_batch_runs_against_the_upstream_with_per_line_errors_in_the_error_file(
    upstream: UpstreamServer, relay_server: UpstreamServer
) -> None:
    lines = [line(i) for i in range(40)]
    with httpx.Client(base_url=relay_server.url, timeout=10) as http:
        batch = run_batch(http, lines)
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": 40, "completed": 32, "failed": 8}
        out = jsonl(http.get(f"/v1/files/{batch['output_file_id']}/content").content)
        err = jsonl(http.get(f"/v1/files/{batch['error_file_id']}/content").content)
    assert set(out) | set(err) == {x["custom_id"] for x in lines} and not set(out) & set(err)
    for cid, row in out.items():
        assert row["response"]["status_code"] == 200
        assert row["response"]["body"]["choices"][0]["message"]["content"] == f"line {cid[1:]}"
    stats = upstream.stats()["by_body"]
    for x in lines:
        fail, seen = x["body"].get("echo_fail"), stats[body_key(x["body"])]
        if fail is None:
            continue
        response = err[x["custom_id"]]["response"]
        if fail == 503 and response["status_code"] == 500:
            # its last attempt drew one of the upstream's injected 500s instead (error_rate: which request
            # draws which number depends on arrival order, so on timing): still the last attempt's answer
            assert response["body"]["error"]["type"] == "server_error" and seen["error"] >= 1
        else:
            assert response["status_code"] == fail and response["body"]["error"]["code"] == "echo_fail"
        if fail == 400:
            assert seen["refused"] == 1  # not retried (earlier attempts may have met an injected 500)
        else:
            assert sum(seen.values()) == ATTEMPTS  # every attempt failed, each was retried until the last


def test_hot_requests_pass_through_to_the_upstream(relay_server: UpstreamServer) -> None:
    with httpx.Client(base_url=relay_server.url, timeout=10) as http:
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hot"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hot"
        bad = http.post("/v1/chat/completions", json={"model": "m", "echo_fail": 422, "messages": []})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "echo_fail"  # the upstream's own answer


def test_the_engine_is_registered_and_checks_its_url() -> None:
    engine = registry.create("relay", upstream="http://127.0.0.1:9/v1", rpm=60)
    assert engine.info.name == "relay" and "/v1/embeddings" in engine.info.endpoints
    with pytest.raises(ConfigError):
        RelayEngine("127.0.0.1:9")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_coldbatch_serve_relay_from_the_command_line(upstream: UpstreamServer, tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "coldbatch", "serve", "--engine", "relay"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "--upstream" in missing.stderr
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLDBATCH_")} | {"COLDBATCH_UPSTREAM_KEY": "sk-up"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "relay",
            "--upstream",
            upstream.url + "/v1",
            "--rpm",
            "600",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "cli"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get("/health").json()["engine"] == "relay":
                        break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            r = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "x"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
