"""OpenTelemetry traces for `coldbatch serve` (the optional `[otel]` extra): a no-op unless asked for.

Why: metrics say how much; a trace says what one batch went through. With `OTEL_EXPORTER_OTLP_ENDPOINT`
set (and `pip install coldbatch[otel]`), every batch the executor runs is one span (from its first
request in this process to its final status, with the request counts and token usage), and each request
a child span following the OpenTelemetry GenAI semantic conventions (`gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `error.type`),
exported over OTLP/HTTP by a background batch processor; the standard `OTEL_*` variables (service name,
headers, `OTEL_BSP_MAX_QUEUE_SIZE` …) apply. Without the variable nothing is imported and the executor's
only cost is one clock read and one empty call per chunk of requests.

The requests of one chunk run together in one engine call, so their spans share its start and end. A
batch resumed after a restart gets a new batch span in the new process (the old one was never ended,
so never exported).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from coldbatch.engines.base import Result
from coldbatch.protocol import limits as L

logger = logging.getLogger(__name__)

#: batch endpoint -> gen_ai.operation.name
OPERATIONS = {
    L.CHAT: "chat",
    L.EMBEDDINGS: "embeddings",
    L.COMPLETIONS: "text_completion",
    L.RESPONSES: "chat",
    L.MODERATIONS: "moderations",
}
_Item = tuple[int, str, dict[str, Any]]


class Tracing:
    """The no-op: what the executor calls when no tracing is configured."""

    def requests(self, row: dict[str, Any], chunk: Sequence[_Item], results: Sequence[Result], started_ns: int) -> None:
        """One chunk of a batch's requests finished (started at `started_ns`, wall clock)."""

    def batch_ended(self, row: dict[str, Any], final: str, counts: Mapping[str, int]) -> None:
        """The batch reached its final status with these request counts."""

    def close(self) -> None:
        """Export what is pending (at shutdown)."""


NOOP = Tracing()


class OtelTracing(Tracing):
    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.provider = provider
        self.tracer = provider.get_tracer("coldbatch.server")
        self._batches: dict[str, Any] = {}  # batch id -> its open span

    def _batch_span(self, row: dict[str, Any]) -> Any:
        span = self._batches.get(row["id"])
        if span is None:
            op = OPERATIONS.get(row["endpoint"], "chat")
            span = self.tracer.start_span(
                f"batch {row['model'] or op}",
                attributes={
                    "coldbatch.batch.id": row["id"],
                    "coldbatch.batch.endpoint": row["endpoint"],
                    "coldbatch.batch.requests": row["total"],
                    "gen_ai.operation.name": op,
                    "gen_ai.request.model": row["model"] or "",
                },
            )
            self._batches[row["id"]] = span
        return span

    def requests(self, row: dict[str, Any], chunk: Sequence[_Item], results: Sequence[Result], started_ns: int) -> None:
        parent = self._trace.set_span_in_context(self._batch_span(row))
        ended = time.time_ns()
        op = OPERATIONS.get(row["endpoint"], "chat")
        for (line, cid, body), res in zip(chunk, results, strict=True):
            model = body.get("model") or row["model"] or ""
            span = self.tracer.start_span(
                f"{op} {model}".strip(),
                context=parent,
                start_time=started_ns,
                attributes=_request_attributes(op, model, line, cid, res),
            )
            if not res.ok:
                code = ((res.body.get("error") or {}).get("code")) or str(res.status_code)
                span.set_attribute("error.type", code)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code))
            span.end(end_time=ended)

    def batch_ended(self, row: dict[str, Any], final: str, counts: Mapping[str, int]) -> None:
        span = self._batches.pop(row["id"], None)
        if span is None:
            return  # it ran no request in this process
        fresh = dict(counts)
        span.set_attributes({"coldbatch.batch.status": final, **{f"coldbatch.batch.{k}": v for k, v in fresh.items()}})
        if final != "completed":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, final))
        span.end()

    def close(self) -> None:
        for span in self._batches.values():
            span.end()  # the server is stopping: what ran so far is still worth seeing
        self._batches.clear()
        self.provider.shutdown()


def _request_attributes(op: str, model: str, line: int, cid: str, res: Result) -> dict[str, Any]:
    usage = res.usage or {}
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.request.model": model,
        "coldbatch.custom_id": cid,
        "coldbatch.line": line,
        "http.response.status_code": res.status_code,
    }
    if res.ok:
        attrs["gen_ai.usage.input_tokens"] = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
        attrs["gen_ai.usage.output_tokens"] = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
        if isinstance(res.body.get("id"), str):
            attrs["gen_ai.response.id"] = res.body["id"]
    return attrs


def from_env(environ: Mapping[str, str], provider: Any = None) -> Tracing:
    """OTLP tracing when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, or `provider` is given
    (tests pass one with an in-memory exporter); else the no-op. Missing packages: a warning and the no-op."""
    if provider is None and not (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return NOOP
    try:
        if provider is None:
            provider = _otlp_provider(environ)
        return OtelTracing(provider)
    except ImportError as exc:
        logger.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed (%s): "
            "pip install 'coldbatch[otel]'; tracing is off",
            exc,
        )
        return NOOP


def _otlp_provider(environ: Mapping[str, str]) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "coldbatch-serve"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
