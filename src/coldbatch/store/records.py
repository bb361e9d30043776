"""The values that cross the store interfaces, shared by every implementation.

They live here rather than beside one implementation so that a second backend (memory, PostgreSQL)
imports nothing from the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

#: a row as the server serves it (a file, a batch, a unit, a job): column name → value
Row = dict[str, Any]
#: one finished request for `ServerStore.record_results`:
#: custom_id, line, ok, JSON output line, input tokens, cached input tokens, output tokens
ResultRow = tuple[str, int, bool, bytes, int, int, int]
#: one logged request as `ServerStore.iter_results` gives it back: custom_id, line, ok, JSON output line
LoggedRow = tuple[str, int, bool, bytes]


@dataclass
class Outcome:
    """One request's result as collected into the ledger."""

    custom_id: str
    state: str  # ok | retry | failed
    content: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    confidence: float | None = None  #: a label answer's probability, from the provider's logprobs (confidence.py)


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer, by request key (`core.canonical.request_key`)."""

    key: str
    content: str
    prompt_tokens: int
    completion_tokens: int
    confidence: float | None = None  #: a label answer's probability (runner/confidence.py)


def decoded_job(row: Row) -> Row:
    """A stored job row as `LedgerStore.job` returns it: its JSON columns (options, estimate, report)
    parsed, an empty one as None. Every ledger backend stores them as JSON text, so they decode here,
    once, and the backends cannot disagree on what an empty column reads as."""
    out = dict(row)
    for key in ("options", "estimate", "report"):
        out[key] = orjson.loads(out[key]) if out[key] else None
    return out


#: the batches table's columns, the same on every backend (a row is written with those of them it has)
BATCH_COLUMNS = (
    "id",
    "owner",
    "endpoint",
    "model",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "total",
    "completed",
    "failed",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "errors",
    "metadata",
    "output_ttl",
    "enqueued_tokens",
)
