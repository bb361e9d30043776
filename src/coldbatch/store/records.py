"""The values that cross the store interfaces, shared by every implementation.

They live here rather than beside one implementation so that a second backend (memory, PostgreSQL)
imports nothing from the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson

from coldbatch.core.frozen import FrozenDict, frozen
from coldbatch.core.unit_state import JobStatus, UnitState
from coldbatch.errors import InputError

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


def _frozen_json(text: str | bytes | None) -> Mapping[str, Any] | None:
    """A JSON column as a read-only mapping (None when empty): a record's options cannot be changed in place,
    only written anew with `set_job`."""
    return FrozenDict(frozen(orjson.loads(text))) if text else None


def job_status(job_id: str, value: str) -> JobStatus:
    """A stored job status; one this code does not know is refused, naming the job."""
    try:
        return JobStatus(value)
    except ValueError:
        raise InputError(
            f"job {job_id}: unknown job status {value!r} in the ledger (known: {', '.join(JobStatus)}); was it "
            "written by a newer coldbatch?"
        ) from None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the ledger holds it. Its JSON columns (options, estimate, report) are decoded here, once, for
    every backend; the runner reads them into its typed values (`RunOptions.from_json`, `JobEstimate.of`,
    `Report.of`), which the store cannot import (it sits below the runner)."""

    id: str
    created_at: int
    status: JobStatus
    input_path: str
    output_path: str
    options: Mapping[str, Any]
    estimate: Mapping[str, Any] | None
    report: Mapping[str, Any] | None
    updated_at: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> JobRecord:
        """The one place a stored job row becomes a record; a status this code does not know is refused."""
        return cls(
            id=row["id"],
            created_at=int(row["created_at"]),
            status=job_status(row["id"], row["status"]),
            input_path=row["input_path"],
            output_path=row["output_path"],
            options=_frozen_json(row["options"]) or FrozenDict(),
            estimate=_frozen_json(row["estimate"]),
            report=_frozen_json(row["report"]),
            updated_at=int(row["updated_at"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The job as `coldbatch status --json` prints it: the ledger's column names, plain JSON values."""
        return {
            "id": self.id,
            "created_at": self.created_at,
            "status": self.status.value,
            "input_path": self.input_path,
            "output_path": self.output_path,
            "options": self.options,
            "estimate": self.estimate,
            "report": self.report,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """One unit (one submission of one request file) as the ledger holds it; see `core/unit_state.py`.
    Changed only through the ledger's compare-and-set writes: a changed copy is `dataclasses.replace`."""

    id: int
    job_id: str
    round: int
    shard: int
    try_: int  #: the column `try`: 1, then one more each time the batch is requeued (collect.MAX_REQUEUES)
    path: str
    requests: int
    bytes: int
    sha256: str
    model: str
    tokens: int
    state: UnitState
    intent_at: int | None
    file_id: str | None
    batch_id: str | None
    batch_status: str | None
    output_file_id: str | None
    error_file_id: str | None
    detail: str | None
    remote_cleaned: bool
    updated_at: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> UnitRecord:
        """The one place a stored unit row becomes a record; a state this code does not know is refused."""
        try:
            state = UnitState(row["state"])
        except ValueError:
            raise InputError(
                f"job {row['job_id']}, unit {row['id']}: unknown unit state {row['state']!r} in the ledger "
                f"(known: {', '.join(UnitState)}); was it written by a newer coldbatch?"
            ) from None
        return cls(
            id=int(row["id"]),
            job_id=row["job_id"],
            round=int(row["round"]),
            shard=int(row["shard"]),
            try_=int(row["try"]),
            path=row["path"],
            requests=int(row["requests"]),
            bytes=int(row["bytes"]),
            sha256=row["sha256"],
            model=row["model"],
            tokens=int(row["tokens"] or 0),
            state=state,
            intent_at=row["intent_at"],
            file_id=row["file_id"],
            batch_id=row["batch_id"],
            batch_status=row["batch_status"],
            output_file_id=row["output_file_id"],
            error_file_id=row["error_file_id"],
            detail=row["detail"],
            remote_cleaned=bool(row["remote_cleaned"]),
            updated_at=int(row["updated_at"]),
        )

    def need_file_id(self) -> str:
        """The provider's id of the unit's file: only a unit past `uploaded` has one (a bug otherwise)."""
        if self.file_id is None:
            raise ValueError(f"job {self.job_id}, unit {self.id} ({self.state}): no file uploaded yet")
        return self.file_id

    def need_batch_id(self) -> str:
        """The provider's id of the unit's batch: only a unit past `created` has one (a bug otherwise)."""
        if self.batch_id is None:
            raise ValueError(f"job {self.job_id}, unit {self.id} ({self.state}): no batch created yet")
        return self.batch_id

    def to_json(self) -> dict[str, Any]:
        """The unit as `coldbatch status --json` prints it: the ledger's column names (`try`, not `try_`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "try_"}
        out["try"] = self.try_
        out["state"] = self.state.value
        out["remote_cleaned"] = int(self.remote_cleaned)
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
