"""Server metadata in one SQLite file (WAL): files, batches, their status events, and results.

Status changes are compare-and-set (`UPDATE … WHERE status IN allowed_from(to)`) with an event row in
the same transaction (procrastinate's pattern), so two actors (a cancel request and the executor,
say) can never both win. Results are the executor's durable log: one row per input line (a validated
file has one `custom_id` per line; keyed by line, inserts append in input order), inserted
with the request counts and token usage in one transaction, so `request_counts` never runs ahead of
what a restart would find, and a row logged twice is counted once. The log is only written while its
batch is `in_progress` or `cancelling`, and only read before the batch is terminal; once terminal it
is garbage, deleted in small transactions after the final transition (`purge_results`) rather than in
it, so one big batch never holds the single SQLite write lock for long. WAL with synchronous=NORMAL
survives a killed process (only an OS crash can lose the last transactions).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from coldbatch.core.status import TIMESTAMP_FIELD, BatchStatus, allowed_from
from coldbatch.store import shared_sql, sqlite_db
from coldbatch.store.records import BATCH_COLUMNS, LoggedRow, ResultRow
from coldbatch.store.shared_sql import TERMINAL as _TERMINAL
from coldbatch.store.sqlite_reports import SqliteReports

__all__ = ["LoggedRow", "ResultRow", "SqliteStore"]

logger = logging.getLogger(__name__)

#: the server schema's migrations (`store/sqlite_db.py` applies them)
MIGRATIONS = "coldbatch.store.migrations"

#: statuses in which finished requests may still be logged (in-flight requests finish after a cancel)
_LOGGING = (BatchStatus.IN_PROGRESS.value, BatchStatus.CANCELLING.value)


#: log this many bytes of results, then wake the background checkpointer
CHECKPOINT_EVERY_BYTES = 4 << 20
#: commit-time auto-checkpoint (pages), a backstop in case the background one falls behind
AUTOCHECKPOINT_PAGES = 16384


class SqliteStore(SqliteReports):
    """One SQLite file; one connection per thread (made on first use). The dashboard's and /metrics'
    read-only queries are in `store/sqlite_reports.py`.

    WAL checkpoints (copying the log into the database file, with fsyncs) would otherwise run inside
    whichever COMMIT crosses SQLite's 1,000-page threshold, and that is usually the event loop's, logging
    results (measured: the commits of a 50,000-request batch took 0.4 s with those checkpoints, 0.1 s
    without). So commits only checkpoint past a large backstop, and a background thread runs a PASSIVE
    checkpoint (it waits for no reader or writer, and blocks none) every `CHECKPOINT_EVERY_BYTES` of
    logged results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._logged_bytes = 0
        self._checkpointer: _Checkpointer | None = None
        self._lock = threading.Lock()
        self.migrate()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite_db.connect(self.path, autocheckpoint=AUTOCHECKPOINT_PAGES)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (and stop the background checkpointer)."""
        with self._lock:
            cp, self._checkpointer = self._checkpointer, None
        if cp is not None:
            cp.stop()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def checkpoint(self) -> tuple[int, int, int]:
        """PASSIVE WAL checkpoint: (busy, frames in the log, frames copied to the database)."""
        row = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def _logged(self, n: int) -> None:
        self._logged_bytes += n
        if self._logged_bytes < CHECKPOINT_EVERY_BYTES:
            return
        self._logged_bytes = 0
        with self._lock:
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(self)
                self._checkpointer.start()
            self._checkpointer.wake.set()

    # -- schema -----------------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations, each with its bookkeeping row in one transaction."""
        return sqlite_db.migrate(self.db, MIGRATIONS)

    # -- files ------------------------------------------------------------------------------------------
    def create_file(self, row: dict[str, Any]) -> None:
        self.db.execute(shared_sql.insert_file(":{}"), row)

    def get_file(self, file_id: str, owner: str | None) -> dict[str, Any] | None:
        sql = "SELECT * FROM files WHERE id = ? AND deleted = 0"
        args: tuple[Any, ...] = (file_id,)
        if owner is not None:
            sql += " AND owner = ?"
            args += (owner,)
        row = self.db.execute(sql, args).fetchone()
        return dict(row) if row else None

    def list_files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> tuple[list[dict[str, Any]], bool]:
        query, args = shared_sql.files_page("?", owner, purpose=purpose, after=after, limit=limit, order=order)
        return shared_sql.split_page([dict(r) for r in self.db.execute(query, args)], limit)

    def delete_file(self, file_id: str, owner: str) -> bool:
        cur = self.db.execute(
            "UPDATE files SET deleted = 1 WHERE id = ? AND owner = ? AND deleted = 0", (file_id, owner)
        )
        return cur.rowcount == 1

    def expired_files(self, now: int) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM files WHERE deleted = 0 AND expires_at IS NOT NULL AND expires_at <= ?", (now,)
            )
        ]

    def forget_file(self, file_id: str) -> None:
        self.db.execute("UPDATE files SET deleted = 1 WHERE id = ?", (file_id,))

    # -- batches ----------------------------------------------------------------------------------------
    def create_batch(self, row: dict[str, Any]) -> None:
        cols = [c for c in BATCH_COLUMNS if c in row]
        self.db.execute(shared_sql.insert_row("batches", cols, ":{}"), {c: shared_sql.db_value(row[c]) for c in cols})
        self._event(row["id"], None, row["status"], row["created_at"], None)

    def get_batch(self, batch_id: str, owner: str | None) -> dict[str, Any] | None:
        sql = "SELECT * FROM batches WHERE id = ?"
        args: tuple[Any, ...] = (batch_id,)
        if owner is not None:
            sql += " AND owner = ?"
            args += (owner,)
        row = self.db.execute(sql, args).fetchone()
        return dict(row) if row else None

    def list_batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        query, args = shared_sql.batches_page("?", owner, after=after, limit=limit)
        return shared_sql.split_page([dict(r) for r in self.db.execute(query, args)], limit)

    def delete_batch(self, batch_id: str, owner: str) -> bool:
        """Forget a terminal batch and its events (Anthropic's DELETE /v1/messages/batches/{id}); False when the
        owner has no such batch or it is not terminal. Its files are the caller's to delete."""
        cur = self.db.execute(
            f"DELETE FROM batches WHERE id = ? AND owner = ? AND status IN ({', '.join('?' * len(_TERMINAL))})",
            (batch_id, owner, *_TERMINAL),
        )
        if cur.rowcount == 1:
            self.db.execute("DELETE FROM batch_events WHERE batch_id = ?", (batch_id,))
        return cur.rowcount == 1

    def unfinished_batches(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.db.execute(
                f"SELECT * FROM batches WHERE status NOT IN ({', '.join('?' * len(_TERMINAL))}) ORDER BY seq", _TERMINAL
            )
        ]

    def transition(
        self, batch_id: str, to: BatchStatus, now: int, *, files: Sequence[dict[str, Any]] = (), **fields: Any
    ) -> bool:
        """Compare-and-set `status` to `to` (and set its `*_at` plus `fields`); False if not allowed now.

        `files` (result files) are registered in the same transaction, so they become visible exactly when
        the batch that owns them moves to its final status, and only if it does.
        """
        frm = sorted(s.value for s in allowed_from(to))
        sets = {"status": to.value, **fields}
        if to in TIMESTAMP_FIELD:
            sets[TIMESTAMP_FIELD[to]] = now
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
            cur = db.execute(
                f"UPDATE batches SET {', '.join(f'{k} = ?' for k in sets)} "
                f"WHERE id = ? AND status IN ({', '.join('?' * len(frm))})",
                [*(shared_sql.db_value(v) for v in sets.values()), batch_id, *frm],
            )
            ok = cur.rowcount == 1
            if ok:
                for f in files:
                    db.execute(shared_sql.insert_file(":{}", "INSERT OR REPLACE"), f)
                self._event(batch_id, row[0] if row else None, to.value, now, None)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ok

    def _event(self, batch_id: str, frm: str | None, to: str, at: int, detail: str | None) -> None:
        self.db.execute("INSERT INTO batch_events VALUES (?, ?, ?, ?, ?)", (batch_id, frm, to, at, detail))

    def events(self, batch_id: str) -> list[tuple[str | None, str]]:
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT from_status, to_status FROM batch_events WHERE batch_id = ? ORDER BY rowid", (batch_id,)
            )
        ]

    def event_log(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's status changes, oldest first: from_status, to_status, at (epoch seconds)."""
        return [
            dict(r)
            for r in self.db.execute(
                "SELECT from_status, to_status, at FROM batch_events WHERE batch_id = ? ORDER BY rowid", (batch_id,)
            )
        ]

    # -- results ----------------------------------------------------------------------------------------
    def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        """Log finished requests and advance the counts and token usage, atomically; returns how many rows
        were new. A line already logged (or repeated within `rows`: the first wins) is ignored and counts
        nothing. Nothing is written unless the batch is `in_progress` or `cancelling`."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None or row[0] not in _LOGGING or not rows:
                db.execute("COMMIT")
                return 0
            fresh = _not_logged(db, batch_id, rows)
            db.execute(_INSERT_RESULTS, _insert_params(batch_id, fresh))
            db.execute(*shared_sql.advance_counts("?", batch_id, fresh))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._logged(sum(len(r[3]) for r in fresh))
        return len(fresh)

    def enqueued_tokens(self, model: str | None) -> int:
        """Prompt tokens of this model's batches that are queued or running (the enqueued-token quota)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(enqueued_tokens), 0) FROM batches WHERE model IS ? AND status IN "
            "('in_progress', 'finalizing')",
            (model,),
        ).fetchone()
        return int(row[0])

    def done_lines(self, batch_id: str) -> set[int]:
        """Input lines of the batch whose result is logged."""
        return {r[0] for r in self.db.execute("SELECT line FROM results WHERE batch_id = ?", (batch_id,))}

    def iter_results(self, batch_id: str) -> Iterator[LoggedRow]:
        """The log in input order (the order of the output and error files)."""
        cur = self.db.execute(
            "SELECT custom_id, line, ok, data FROM results WHERE batch_id = ? ORDER BY line", (batch_id,)
        )
        for r in cur:
            yield r[0], r[1], bool(r[2]), r[3]

    def purge_results(self, batch_id: str, chunk: int = 2048) -> int:
        """Delete the log of a terminal batch, `chunk` rows per transaction (other writers get the lock in
        between); returns the rows deleted. The log of a batch that is not terminal is never touched."""
        total = 0
        while True:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
                n = 0
                if row is None or row[0] in _TERMINAL:
                    n = db.execute(
                        "DELETE FROM results WHERE batch_id = ? AND line IN (SELECT line FROM "
                        "results WHERE batch_id = ? LIMIT ?)",
                        (batch_id, batch_id, chunk),
                    ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            total += n
            if n < chunk:
                return total

    def finished_logs(self) -> list[str]:
        """Batches that are terminal (or gone) but still have logged results: a crash came between the final
        transition and `purge_results`."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT r.batch_id FROM results r LEFT JOIN batches b ON b.id = r.batch_id "
                f"WHERE b.id IS NULL OR b.status IN ({', '.join('?' * len(_TERMINAL))})",
                _TERMINAL,
            )
        ]

    # -- blob bookkeeping -------------------------------------------------------------------------------
    def blob_owners(self) -> tuple[set[str], set[str]]:
        """(ids of live files, ids of deleted files that an unfinished batch still reads) — every blob
        outside both sets is garbage."""
        live = {r[0] for r in self.db.execute("SELECT id FROM files WHERE deleted = 0")}
        in_use = {
            r[0]
            for r in self.db.execute(
                f"SELECT input_file_id FROM batches WHERE status NOT IN ({', '.join('?' * len(_TERMINAL))})", _TERMINAL
            )
        }
        return live, in_use


class _Checkpointer(threading.Thread):
    """Runs `store.checkpoint()` in the background whenever woken; a daemon, so it never holds up exit
    (a checkpoint cut short by the process ending is harmless: the WAL still holds every frame)."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self.store = store
        self.wake = threading.Event()
        self._stopping = False

    def run(self) -> None:
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self._stopping:
                    return
                try:
                    self.store.checkpoint()
                except sqlite3.Error as exc:  # e.g. busy for 30 s: the commit-time backstop still applies
                    logger.warning("background WAL checkpoint failed: %s", exc)
        finally:
            conn = getattr(self.store._local, "conn", None)
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        self.join(10)


#: one statement for a whole group: sqlite3 releases the GIL for each step, and `executemany` takes one
#: step (and binds five parameters in Python) per row, so a flush on a worker thread fought the event loop
#: for the GIL once per row; one step inserts the group with the GIL released throughout
_INSERT_RESULTS = (
    "INSERT INTO results (batch_id, custom_id, line, ok, data) SELECT ?1, json_extract(value, '$[0]'), "
    "json_extract(value, '$[1]'), json_extract(value, '$[2]'), substr(?3, json_extract(value, '$[3]'), "
    "json_extract(value, '$[4]')) FROM json_each(?2)"
)


def _insert_params(batch_id: str, rows: Sequence[ResultRow]) -> tuple[str, bytes, bytes]:
    """`_INSERT_RESULTS`'s parameters: the rows as JSON `[custom_id, line, ok, start, length]` (1-based
    byte offsets into the third) and every row's data, concatenated."""
    meta, start = [], 1
    for cid, line, ok, data, *_ in rows:
        meta.append((cid, line, ok, start, len(data)))
        start += len(data)
    return batch_id, orjson.dumps(meta), b"".join([r[3] for r in rows])


def _not_logged(db: sqlite3.Connection, batch_id: str, rows: Sequence[ResultRow]) -> Sequence[ResultRow]:
    """The rows whose line is not logged yet (the first of each, if one repeats within `rows`). The usual
    case, all new and no repeats, costs one index probe per row inside SQLite and no per-row Python."""
    logged = {
        r[0]
        for r in db.execute(
            "SELECT line FROM results WHERE batch_id = ? AND line IN (SELECT value FROM json_each(?))",
            (batch_id, orjson.dumps([r[1] for r in rows])),
        )
    }
    if not logged and len({r[1] for r in rows}) == len(rows):
        return rows
    fresh = []
    for r in rows:
        if r[1] not in logged:
            logged.add(r[1])
            fresh.append(r)
    return fresh
