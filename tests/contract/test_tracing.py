"""OpenTelemetry traces: a batch span with one GenAI child span per request (in-memory exporter, no network)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from coldbatch.server import tracing

from .conftest import ServeFactory

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="OpenTelemetry is not installed (coldbatch[otel])")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

CHAT = "/v1/chat/completions"


def _line(cid: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {cid}"}], **body},
    }


def test_a_batch_is_one_span_with_a_genai_span_per_request(serve: ServeFactory) -> None:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    srv = serve(tracer_provider=provider)
    client = srv.client()
    data = b"".join(json.dumps(ln).encode() + b"\n" for ln in [_line("a"), _line("b"), _line("c", echo_fail=400)])
    f = client.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 20
    while b.status != "completed":
        assert time.monotonic() < deadline, b.status
        time.sleep(0.05)
        b = client.batches.retrieve(b.id)
    assert b.usage is not None

    spans = exporter.get_finished_spans()
    [batch] = [s for s in spans if s.name.startswith("batch")]
    requests = sorted((s for s in spans if s.name == "chat gpt-4o-mini"), key=lambda s: s.attributes["coldbatch.line"])
    assert batch.name == "batch gpt-4o-mini" and batch.attributes["coldbatch.batch.id"] == b.id
    assert batch.attributes["coldbatch.batch.status"] == "completed" and batch.attributes["coldbatch.batch.failed"] == 1
    assert [s.parent.span_id for s in requests] == [batch.context.span_id] * 3
    assert {s.context.trace_id for s in requests} == {batch.context.trace_id}
    assert [s.attributes["coldbatch.custom_id"] for s in requests] == ["a", "b", "c"]
    assert all(s.attributes["gen_ai.operation.name"] == "chat" for s in requests)
    assert all(s.attributes["gen_ai.request.model"] == "gpt-4o-mini" for s in requests)
    assert sum(s.attributes.get("gen_ai.usage.input_tokens", 0) for s in requests) == b.usage.input_tokens
    assert sum(s.attributes.get("gen_ai.usage.output_tokens", 0) for s in requests) == b.usage.output_tokens
    assert requests[2].attributes["error.type"] == "echo_fail" and not requests[2].status.is_ok


def test_no_endpoint_no_tracing() -> None:
    assert tracing.from_env({}) is tracing.NOOP


def test_an_endpoint_makes_an_otlp_exporter() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the OTLP exporter is not installed")
    t = tracing.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert isinstance(t, tracing.OtelTracing)
    t.close()  # nothing was recorded: shutting down sends nothing
