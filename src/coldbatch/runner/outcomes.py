"""Read a batch's output and error files into per-request `Outcome`s, classifying each failure.

Transient (retried in a follow-up batch): HTTP 408, 409, 429 and 5xx, `batch_expired`, engine errors,
and a request that appears in neither file. Permanent (reported with its message): every other 4xx
(invalid request, content filter, ...), and `batch_cancelled` when the user cancelled the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from coldbatch.jsonl import read_outputs
from coldbatch.protocol import limits as L
from coldbatch.protocol.lines import OutputLine
from coldbatch.runner.confidence import label_confidence
from coldbatch.runner.ledger import Outcome

TRANSIENT_CODES = frozenset(
    {"batch_expired", "engine_error", "server_error", "rate_limit_exceeded", "timeout", "missing_result"}
)


def transient_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def content_of(endpoint: str, body: dict[str, Any]) -> str:
    """The answer as text: the message for chat, the text for completions/responses, JSON for vectors."""
    if endpoint == L.CHAT:
        return str((body.get("choices") or [{}])[0].get("message", {}).get("content") or "")
    if endpoint == L.COMPLETIONS:
        return str((body.get("choices") or [{}])[0].get("text") or "")
    if endpoint == L.EMBEDDINGS:
        vecs = [d.get("embedding") for d in body.get("data") or []]
        return orjson.dumps(vecs[0] if len(vecs) == 1 else vecs).decode()
    if endpoint == L.RESPONSES:
        parts = [
            c.get("text", "") for o in body.get("output") or [] for c in o.get("content") or [] if isinstance(c, dict)
        ]
        return "".join(parts)
    return orjson.dumps(body).decode()


def _usage(body: dict[str, Any]) -> tuple[int, int, int]:
    u = body.get("usage") or {}
    prompt = u.get("prompt_tokens", u.get("input_tokens", 0)) or 0
    completion = u.get("completion_tokens", u.get("output_tokens", 0)) or 0
    details = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
    return int(prompt), int(completion), int(details.get("cached_tokens", 0) or 0)


def answered(
    custom_id: str, endpoint: str, body: dict[str, Any], labels: tuple[str, frozenset[str]] | None = None
) -> Outcome:
    """A 2xx answer as an Outcome; with `labels` (field, allowed), its confidence from the body's logprobs."""
    p, c, cached = _usage(body)
    content = content_of(endpoint, body)
    confidence = label_confidence(body, content, *labels) if labels is not None and endpoint == L.CHAT else None
    return Outcome(
        custom_id, "ok", content, prompt_tokens=p, completion_tokens=c, cached_tokens=cached, confidence=confidence
    )


def read_output(
    path: Path, endpoint: str, *, cancelled_by_user: bool = False, labels: tuple[str, frozenset[str]] | None = None
) -> Iterator[Outcome]:
    """The output file's lines. A line that is not a 2xx answer (some providers put those here too) is
    classified like an error-file line, never taken for a success."""
    for line in read_outputs(path):
        if line.ok:
            yield answered(line.custom_id, endpoint, line.body or {}, labels)
        else:
            yield classify(line, cancelled_by_user=cancelled_by_user)


def read_errors(path: Path, *, cancelled_by_user: bool) -> Iterator[Outcome]:
    for line in read_outputs(path):
        yield classify(line, cancelled_by_user=cancelled_by_user)


def classify(line: OutputLine | dict[str, Any], *, cancelled_by_user: bool) -> Outcome:
    """One failed request: `retry` (transient) or `failed` (permanent, reported with its message).
    `line` may also be a decoded output line (a dict)."""
    if isinstance(line, dict):
        line = OutputLine.from_obj(line)
    if line.status_code is None:
        err = line.error or {}
        code = str(err.get("code") or "unknown_error")
        transient = code in TRANSIENT_CODES or (code == "batch_cancelled" and not cancelled_by_user)
        return Outcome(line.custom_id, "retry" if transient else "failed", None, code, err.get("message"))
    status = line.status_code
    err = (line.body or {}).get("error") or {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    code = str(err.get("code") or f"http_{status}")
    transient = transient_status(status) or code in TRANSIENT_CODES
    return Outcome(
        line.custom_id, "retry" if transient else "failed", None, code, err.get("message") or f"HTTP {status}"
    )
