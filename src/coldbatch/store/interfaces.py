"""What each half of coldbatch needs from storage, as four small Protocols.

The server's metadata (`ServerStore`) and file bytes (`BlobStore`), and the client's job ledger
(`LedgerStore`) and result cache (`CacheStore`), are each written against one of these, never against
SQLite or a folder. Each has a SQLite (or folder) implementation and an in-memory one
(`store/memory.py`), and one contract suite (tests/store/) that every implementation passes: a new
backend (PostgreSQL, S3) is a new class plus one more parameter of that suite.

The rules every implementation keeps, whatever it stores in:
- status changes are compare-and-set against `core.status.allowed_from` (batches) or
  `core.unit_state` (units, jobs), with one event per change that wins and none for one refused;
- writes that belong together (a transition and the result files it publishes; a results batch and
  the counts it adds; a unit collected and its results) happen together or not at all;
- a blob appears under its key only once completely written; reads and writes stream.
Rows cross these interfaces as plain dicts (`Row`): the server serves them as JSON as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from coldbatch.core.status import BatchStatus
from coldbatch.core.unit_state import JobStatus, UnitState
from coldbatch.store.records import Entry, JobRecord, LoggedRow, Outcome, ResultRow, Row, UnitRecord

__all__ = ["BlobStore", "CacheStore", "LedgerStore", "ServerStore"]


@runtime_checkable
class ServerStore(Protocol):
    """Files, batches with their status events, and the executor's results log (one row per input line)."""

    def migrate(self) -> list[str]:
        """Apply pending schema migrations; the names applied (none: already current)."""
        ...

    def close(self) -> None: ...

    # -- files ----------------------------------------------------------------------------------------
    def create_file(self, row: Row) -> None:
        """Register an uploaded file: id, owner, filename, purpose, bytes, created_at, expires_at."""
        ...

    def get_file(self, file_id: str, owner: str | None) -> Row | None:
        """A live (not deleted) file; `owner` None: whoever owns it."""
        ...

    def list_files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> tuple[list[Row], bool]:
        """One page of the owner's live files in upload order (`order` "asc"/"desc") after the file `after`;
        and whether more follow."""
        ...

    def delete_file(self, file_id: str, owner: str) -> bool:
        """Mark the owner's file deleted; False if there was no such live file."""
        ...

    def expired_files(self, now: int) -> list[str]:
        """Ids of live files whose `expires_at` is at or before `now`."""
        ...

    def forget_file(self, file_id: str) -> None:
        """Mark a file deleted whoever owns it (expiry)."""
        ...

    # -- batches --------------------------------------------------------------------------------------
    def create_batch(self, row: Row) -> None:
        """Insert a batch in its first status, with the first event (None → status)."""
        ...

    def get_batch(self, batch_id: str, owner: str | None) -> Row | None: ...

    def list_batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[Row], bool]:
        """One page of the owner's batches, newest first, after the batch `after`; and whether more follow."""
        ...

    def delete_batch(self, batch_id: str, owner: str) -> bool:
        """Forget a terminal batch of the owner and its events (Anthropic's DELETE); False if there is no such
        batch or it is not terminal. Its files are the caller's to delete."""
        ...

    def unfinished_batches(self) -> list[Row]:
        """Every batch not terminal, oldest first (what a restarted executor picks up)."""
        ...

    def transition(self, batch_id: str, to: BatchStatus, now: int, *, files: Sequence[Row] = (), **fields: Any) -> bool:
        """Compare-and-set the status to `to` (setting its `*_at` and `fields`); False, and nothing written,
        if the batch is not in a status `to` may follow. `files` are registered in the same step."""
        ...

    def events(self, batch_id: str) -> list[tuple[str | None, str]]:
        """(from, to) of each status change, oldest first."""
        ...

    def event_log(self, batch_id: str) -> list[Row]:
        """from_status, to_status, at of each status change, oldest first."""
        ...

    # -- dashboard and metrics (read only) ------------------------------------------------------------
    def batch_page(self, owner: str | None, *, offset: int, limit: int, status: str | None = None) -> list[Row]: ...

    def file_page(self, owner: str | None, *, offset: int, limit: int) -> list[Row]: ...

    def batch_status_counts(self, owner: str | None) -> dict[str, int]: ...

    def failed_results(self, batch_id: str, limit: int) -> list[LoggedRow]: ...

    def batch_totals(self, buckets: Sequence[float], *, after: int = 0, upto: int | None = None) -> list[Row]:
        """Per (endpoint, model, status): batches, completed, failed, tokens, ended, duration, le0..leN."""
        ...

    def settled_seq(self) -> int:
        """The largest seq such that every batch up to it is terminal."""
        ...

    def upload_totals(self, after: int = 0) -> tuple[list[tuple[str, int, int]], int]: ...

    # -- the results log ------------------------------------------------------------------------------
    def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        """Log finished lines and add their counts and tokens in one step; a line logged already (or twice in
        `rows`) counts nothing; nothing unless the batch is in_progress or cancelling. Returns rows new."""
        ...

    def enqueued_tokens(self, model: str | None) -> int: ...

    def done_lines(self, batch_id: str) -> set[int]: ...

    def iter_results(self, batch_id: str) -> Iterator[LoggedRow]:
        """The log in input-line order, streamed."""
        ...

    def purge_results(self, batch_id: str, chunk: int = 2048) -> int:
        """Delete a terminal (or vanished) batch's log in steps of `chunk`; a live batch's log is kept."""
        ...

    def finished_logs(self) -> list[str]:
        """Batches terminal or gone whose log is not purged yet (a crash came in between)."""
        ...

    def blob_owners(self) -> tuple[set[str], set[str]]:
        """(live file ids, deleted file ids an unfinished batch still reads): other blobs are garbage."""
        ...


@runtime_checkable
class BlobStore(Protocol):
    """File bytes under server-minted keys. A key appears only once its bytes are complete (atomic publish):
    a crash leaves the whole blob or none, plus scratch that `clear_tmp` removes at the next start."""

    def writer(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """A stream to write the blob into; published under `key` only if the block ends without error."""
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        """A stream of the blob's bytes from `start` (FileNotFoundError if absent). `end` (exclusive) lets a
        remote store ask for a range; a reader must still stop there itself."""
        ...

    def iter_chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        """The blob's bytes in blocks of at most `size`, read as they are consumed (a download)."""
        ...

    def local_path(self, key: str) -> Path:
        """A local file holding the blob's bytes, for readers that need a real file (the validator's worker
        process, line iteration over a mapped file, sendfile). A folder store returns its own file; a remote
        store a local copy it keeps. Raises ValueError for a key that is not a server-minted id."""
        ...

    @property
    def local_root(self) -> Path:
        """The local folder writes go through (a remote store's scratch): disk-space checks watch it."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def mtime(self, key: str) -> float:
        """When the blob was published (epoch seconds): recovery tells old orphans from fresh writes."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; absent already is fine."""
        ...

    def stored_keys(self) -> list[str]:
        """Every published key (writes in progress excluded)."""
        ...

    def clear_tmp(self) -> int | None:
        """Drop writes a crash interrupted (at start; a shared remote store only those past a grace period,
        since other processes may be writing); how many, where the store counts them."""
        ...


@runtime_checkable
class LedgerStore(Protocol):
    """The client's durable record of jobs, units (one submission of one request file) and per-row results.

    Unit states follow `core.unit_state.UNIT_TRANSITIONS`, job statuses `JOB_TRANSITIONS`; every change is
    compare-and-set and leaves one event (`unit_events`, `job_events`)."""

    @property
    def path(self) -> Path | None:
        """Where the ledger lives, for messages (None: in memory)."""
        ...

    def close(self) -> None: ...

    # -- jobs -----------------------------------------------------------------------------------------
    def create_job(self, job_id: str, input_path: str, output_path: str, options: Mapping[str, Any]) -> None: ...

    def job(self, job_id: str) -> JobRecord | None:
        """The job with options, estimate and report decoded (None: no such job)."""
        ...

    def job_status(self, job_id: str) -> JobStatus | None:
        """The job's status alone (None: no such job): what a running job checks between steps, without
        decoding its options, estimate and report."""
        ...

    def jobs(self) -> list[JobRecord]:
        """Every job, newest first."""
        ...

    def set_job(self, job_id: str, **fields: Any) -> bool:
        """Write options / estimate / report, and a `status` through the job table, in one step; False (and
        nothing written) if the status may not follow the current one. ValueError for an unknown field."""
        ...

    def move_job(self, job_id: str, to: JobStatus) -> bool:
        """Compare-and-set the job status; False if the job is not in a status `to` may follow."""
        ...

    def job_events(self, job_id: str) -> list[tuple[str | None, str]]: ...

    # -- units ----------------------------------------------------------------------------------------
    def add_units(self, job_id: str, units: Iterable[dict[str, Any]]) -> None:
        """Plan units, all or none; a (round, shard) the job has already is left alone."""
        ...

    def units(self, job_id: str, states: Sequence[str] | None = None) -> list[UnitRecord]: ...

    def max_round(self, job_id: str) -> int: ...

    def move_unit(self, unit_id: int, to: UnitState, **fields: Any) -> bool:
        """Compare-and-set a unit's state (and unit columns `fields`: intent_at, file_id, batch_id, ...);
        False, nothing written, if its state is not one `to` may follow."""
        ...

    def set_batch_status(self, unit_id: int, status: str | None) -> None:
        """The provider's latest status of the unit's batch (no state change)."""
        ...

    def mark_cleaned(self, unit_id: int) -> None:
        """The unit's remote files are deleted."""
        ...

    def unit_events(self, unit_id: int) -> list[tuple[str | None, str]]: ...

    # -- results --------------------------------------------------------------------------------------
    def collect(
        self,
        unit: UnitRecord,
        outcomes: Iterable[Outcome],
        *,
        state: UnitState = UnitState.COLLECTED,
        **unit_fields: Any,
    ) -> dict[str, int]:
        """Upsert a unit's outcomes and move it to `state` in one step; a unit already final: all zero."""
        ...

    def record_results(self, job_id: str, outcomes: Sequence[Outcome], *, attempts: int = 1) -> None: ...

    def record_cached(self, job_id: str, outcomes: Iterable[Outcome]) -> None: ...

    def add_rescued(self, job_id: str, ids: Sequence[str]) -> None: ...

    def rescued_summary(self, job_id: str) -> dict[str, int]: ...

    def answered_ids(self, job_id: str) -> set[str]: ...

    def retry_ids(self, job_id: str) -> set[str]: ...

    def give_up(self, job_id: str, ids: Iterable[str]) -> None: ...

    def add_row_keys(self, job_id: str, pairs: Sequence[tuple[str, str]]) -> None: ...

    def rows_per_key(self, job_id: str) -> dict[str, int]: ...

    def keyed(self, job_id: str) -> bool: ...

    def results_for(self, job_id: str, ids: Sequence[str], *, keyed: bool = False) -> dict[str, Row]: ...

    def row_counts(self, job_id: str) -> dict[str, int]: ...

    def summary(self, job_id: str) -> dict[str, Any]: ...

    def iter_results(self, job_id: str) -> Iterator[Row]: ...


@runtime_checkable
class CacheStore(Protocol):
    """Answers by request key across jobs; an entry that fails its checksum is dropped, never returned."""

    corrupt_ignored: int

    def close(self) -> None: ...

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]: ...

    def put_many(self, entries: Iterable[Entry]) -> int: ...

    def prune(self) -> int:
        """Drop entries over the age limit, then the oldest over the count limit; how many went."""
        ...

    def stats(self) -> dict[str, object]: ...

    def clear(self) -> int: ...
