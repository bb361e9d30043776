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
from coldbatch.store import sqlite_db
from coldbatch.store.records import BATCH_COLUMNS, LoggedRow, ResultRow

__all__ = ["LoggedRow", "ResultRow", "SqliteStore"]

logger = logging.getLogger(__name__)

#: the server schema's migrations (`store/sqlite_db.py` applies them)
MIGRATIONS = "coldbatch.store.migrations"

_TERMINAL = tuple(
    s.value for s in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)
)
#: statuses in which finished requests may still be logged (in-flight requests finish after a cancel)
_LOGGING = (BatchStatus.IN_PROGRESS.value, BatchStatus.CANCELLING.value)


#: log this many bytes of results, then wake the background checkpointer
CHECKPOINT_EVERY_BYTES = 4 << 20
#: commit-time auto-checkpoint (pages), a backstop in case the background one falls behind
AUTOCHECKPOINT_PAGES = 16384


class SqliteStore:
    """One SQLite file; one connection per thread (made on first use).

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
        self.db.execute(
            "INSERT INTO files (id, owner, filename, purpose, bytes, created_at, expires_at, status) "
            "VALUES (:id, :owner, :filename, :purpose, :bytes, :created_at, :expires_at, 'processed')",
            row,
        )

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
        desc = order == "desc"
        sql = "SELECT * FROM files WHERE owner = ? AND deleted = 0"
        args: list[Any] = [owner]
        if purpose:
            sql += " AND purpose = ?"
            args.append(purpose)
        if after:
            sql += f" AND seq {'<' if desc else '>'} COALESCE((SELECT seq FROM files WHERE id = ?), ?)"
            args += [after, -1 if desc else 1 << 62]
        sql += f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?"
        args.append(limit + 1)
        rows = [dict(r) for r in self.db.execute(sql, args)]
        return rows[:limit], len(rows) > limit

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
        self.db.execute(
            f"INSERT INTO batches ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})",
            {c: _db_value(row[c]) for c in cols},
        )
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
        sql = "SELECT * FROM batches WHERE owner = ?"
        args: list[Any] = [owner]
        if after:
            sql += " AND seq < COALESCE((SELECT seq FROM batches WHERE id = ? AND owner = ?), -1)"
            args += [after, owner]
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        rows = [dict(r) for r in self.db.execute(sql, args)]
        return rows[:limit], len(rows) > limit

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
                [*(_db_value(v) for v in sets.values()), batch_id, *frm],
            )
            ok = cur.rowcount == 1
            if ok:
                for f in files:
                    db.execute(
                        "INSERT OR REPLACE INTO files (id, owner, filename, purpose, bytes, created_at, "
                        "expires_at, status) VALUES (:id, :owner, :filename, :purpose, :bytes, :created_at, "
                        ":expires_at, 'processed')",
                        f,
                    )
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

    # -- dashboard and metrics (read only) ---------------------------------------------------------------
    def batch_page(
        self, owner: str | None, *, offset: int, limit: int, status: str | None = None
    ) -> list[dict[str, Any]]:
        """One page of batches, newest first (`owner` None: every owner). Uses the (owner, seq) index, so
        a page costs the same with 10 batches or 10,000."""
        where, args = _owner_filter(owner, status)
        return [
            dict(r)
            for r in self.db.execute(
                f"SELECT * FROM batches{where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]
            )
        ]

    def file_page(self, owner: str | None, *, offset: int, limit: int) -> list[dict[str, Any]]:
        """One page of live files, newest first (`owner` None: every owner)."""
        where, args = _owner_filter(owner, None)
        where += " AND deleted = 0" if where else " WHERE deleted = 0"
        return [
            dict(r)
            for r in self.db.execute(
                f"SELECT * FROM files{where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]
            )
        ]

    def batch_status_counts(self, owner: str | None) -> dict[str, int]:
        where, args = _owner_filter(owner, None)
        return {
            r[0]: r[1] for r in self.db.execute(f"SELECT status, COUNT(*) FROM batches{where} GROUP BY status", args)
        }

    def failed_results(self, batch_id: str, limit: int) -> list[LoggedRow]:
        """The first `limit` logged failures of an unfinished batch, in input order (its log is purged once
        it is terminal)."""
        return [
            (r[0], r[1], False, r[2])
            for r in self.db.execute(
                "SELECT custom_id, line, data FROM results WHERE batch_id = ? AND ok = 0 ORDER BY line LIMIT ?",
                (batch_id, limit),
            )
        ]

    def batch_totals(
        self, buckets: Sequence[float], *, after: int = 0, upto: int | None = None
    ) -> list[dict[str, Any]]:
        """Per (endpoint, model, status) of the batches with `after` < seq <= `upto`: batches, request counts,
        tokens, and for terminal batches the cumulative count of durations (created → terminal) at most each
        of `buckets` seconds and their sum. For /metrics: every figure is what the batches' own rows say."""
        ended = "COALESCE(completed_at, failed_at, expired_at, cancelled_at) - created_at"
        le = "".join(f", SUM(CASE WHEN d <= {float(b)!r} THEN 1 ELSE 0 END) AS le{i}" for i, b in enumerate(buckets))
        rows = self.db.execute(
            "SELECT endpoint, COALESCE(model, '') AS model, status, COUNT(*) AS batches, SUM(completed) AS completed,"
            " SUM(failed) AS failed, SUM(input_tokens) AS input_tokens, SUM(cached_tokens) AS cached_tokens,"
            f" SUM(output_tokens) AS output_tokens, COUNT(d) AS ended, COALESCE(SUM(d), 0) AS duration{le}"
            f" FROM (SELECT *, CASE WHEN status IN ({', '.join('?' * len(_TERMINAL))}) THEN {ended} END AS d"
            " FROM batches WHERE seq > ? AND seq <= ?) GROUP BY endpoint, model, status",
            [*_TERMINAL, after, (1 << 62) if upto is None else upto],
        )
        return [dict(r) for r in rows]

    def settled_seq(self) -> int:
        """The largest seq such that every batch up to it is terminal (its row no longer changes)."""
        live = [s.value for s in BatchStatus if s.value not in _TERMINAL]
        row = self.db.execute(
            f"SELECT (SELECT MIN(seq) FROM batches WHERE status IN ({', '.join('?' * len(live))})) - 1,"
            " (SELECT COALESCE(MAX(seq), 0) FROM batches)",
            live,
        ).fetchone()
        return int(row[0] if row[0] is not None else row[1])

    def upload_totals(self, after: int = 0) -> tuple[list[tuple[str, int, int]], int]:
        """(purpose, files, bytes) of the files uploaded after seq `after` (deleted ones included; result
        files not), and the largest seq counted (a file row's size never changes)."""
        upto = int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM files").fetchone()[0])
        rows = [
            (r[0], r[1], r[2])
            for r in self.db.execute(
                "SELECT purpose, COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE purpose != 'batch_output'"
                " AND seq > ? AND seq <= ? GROUP BY purpose",
                (after, upto),
            )
        ]
        return rows, upto

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
            db.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?)",
                [(batch_id, cid, line, ok, data) for cid, line, ok, data, *_ in fresh],
            )
            ok_n = sum(1 for r in fresh if r[2])
            db.execute(
                "UPDATE batches SET completed = completed + ?, failed = failed + ?, input_tokens = input_tokens"
                " + ?, cached_tokens = cached_tokens + ?, output_tokens = output_tokens + ? WHERE id = ?",
                (
                    ok_n,
                    len(fresh) - ok_n,
                    sum(r[4] for r in fresh),
                    sum(r[5] for r in fresh),
                    sum(r[6] for r in fresh),
                    batch_id,
                ),
            )
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


def _owner_filter(owner: str | None, status: str | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if owner is not None:
        clauses.append("owner = ?")
        args.append(owner)
    if status is not None:
        clauses.append("status = ?")
        args.append(status)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _db_value(v: Any) -> Any:
    return orjson.dumps(v).decode() if isinstance(v, dict | list) else v
