"""Server metadata in one SQLite file (WAL): files, batches, their status events, and results.

Status changes are compare-and-set (`UPDATE … WHERE status IN allowed_from(to)`) with an event row in
the same transaction (procrastinate's pattern), so two actors (a cancel request and the executor,
say) can never both win. Results are the executor's durable log: one row per `custom_id`, inserted
with the request counts in one transaction, so `request_counts` never runs ahead of what a restart
would find. WAL with synchronous=NORMAL survives a killed process (only an OS crash can lose the
last transactions).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from coldbatch.core.status import TIMESTAMP_FIELD, BatchStatus, allowed_from

ResultRow = tuple[str, int, bool, bytes]  # custom_id, line, ok, JSON line

_BATCH_COLUMNS = (
    "id", "owner", "endpoint", "model", "input_file_id", "completion_window", "status", "output_file_id",
    "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at", "total", "completed", "failed", "input_tokens", "cached_tokens",
    "output_tokens", "errors", "metadata", "output_ttl", "enqueued_tokens",
)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self.migrate()

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- schema -----------------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations, each with its bookkeeping row in one transaction."""
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER)")
        done = {r[0] for r in db.execute("SELECT name FROM schema_migrations")}
        applied = []
        folder = resources.files("coldbatch.store.migrations")
        for entry in sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql")):
            if entry in done:
                continue
            sql = folder.joinpath(entry).read_text()
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, strftime('%s','now'))", (entry,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            applied.append(entry)
        return applied

    # -- files ------------------------------------------------------------------------------------------
    def create_file(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO files (id, owner, filename, purpose, bytes, created_at, expires_at, status) "
            "VALUES (:id, :owner, :filename, :purpose, :bytes, :created_at, :expires_at, 'processed')", row)

    def get_file(self, file_id: str, owner: str | None) -> dict[str, Any] | None:
        sql = "SELECT * FROM files WHERE id = ? AND deleted = 0"
        args: tuple[Any, ...] = (file_id,)
        if owner is not None:
            sql += " AND owner = ?"
            args += (owner,)
        row = self.db.execute(sql, args).fetchone()
        return dict(row) if row else None

    def list_files(self, owner: str, *, purpose: str | None, after: str | None, limit: int,
                   order: str) -> tuple[list[dict[str, Any]], bool]:
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
        cur = self.db.execute("UPDATE files SET deleted = 1 WHERE id = ? AND owner = ? AND deleted = 0",
                              (file_id, owner))
        return cur.rowcount == 1

    def expired_files(self, now: int) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT id FROM files WHERE deleted = 0 AND expires_at IS NOT NULL AND expires_at <= ?", (now,))]

    def forget_file(self, file_id: str) -> None:
        self.db.execute("UPDATE files SET deleted = 1 WHERE id = ?", (file_id,))

    # -- batches ----------------------------------------------------------------------------------------
    def create_batch(self, row: dict[str, Any]) -> None:
        cols = [c for c in _BATCH_COLUMNS if c in row]
        self.db.execute(f"INSERT INTO batches ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})",
                        {c: _db_value(row[c]) for c in cols})
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

    def unfinished_batches(self) -> list[dict[str, Any]]:
        done = tuple(s.value for s in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED,
                                       BatchStatus.CANCELLED))
        return [dict(r) for r in self.db.execute(
            f"SELECT * FROM batches WHERE status NOT IN ({', '.join('?' * len(done))}) ORDER BY seq", done)]

    def transition(self, batch_id: str, to: BatchStatus, now: int, *, files: Sequence[dict[str, Any]] = (),
                   **fields: Any) -> bool:
        """Compare-and-set `status` to `to` (and set its `*_at` plus `fields`); False if not allowed now.

        `files` (result files) are registered in the same transaction, so they become visible exactly when
        the batch that owns them moves to its final status.
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
                [*(_db_value(v) for v in sets.values()), batch_id, *frm])
            ok = cur.rowcount == 1
            if ok:
                for f in files:
                    db.execute("INSERT OR REPLACE INTO files (id, owner, filename, purpose, bytes, created_at, "
                               "expires_at, status) VALUES (:id, :owner, :filename, :purpose, :bytes, :created_at, "
                               ":expires_at, 'processed')", f)
                if to in (BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED, BatchStatus.FAILED):
                    db.execute("DELETE FROM results WHERE batch_id = ?", (batch_id,))
                self._event(batch_id, row[0] if row else None, to.value, now, None)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ok

    def _event(self, batch_id: str, frm: str | None, to: str, at: int, detail: str | None) -> None:
        self.db.execute("INSERT INTO batch_events VALUES (?, ?, ?, ?, ?)", (batch_id, frm, to, at, detail))

    def events(self, batch_id: str) -> list[tuple[str | None, str]]:
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT from_status, to_status FROM batch_events WHERE batch_id = ? ORDER BY rowid", (batch_id,))]

    # -- results ----------------------------------------------------------------------------------------
    def record_results(self, batch_id: str, rows: Sequence[ResultRow], usage: tuple[int, int, int]) -> int:
        """Log finished requests and advance the counts, atomically. Rows already logged are ignored."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            counts = [0, 0]
            for ok in (True, False):
                before = db.total_changes
                db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?)",
                               [(batch_id, cid, line, int(ok), data) for cid, line, r_ok, data in rows if r_ok == ok])
                counts[0 if ok else 1] = db.total_changes - before
            db.execute("UPDATE batches SET completed = completed + ?, failed = failed + ?, input_tokens = input_tokens"
                       " + ?, cached_tokens = cached_tokens + ?, output_tokens = output_tokens + ? WHERE id = ?",
                       (counts[0], counts[1], *usage, batch_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return counts[0] + counts[1]

    def enqueued_tokens(self, model: str | None) -> int:
        """Prompt tokens of this model's batches that are queued or running (the enqueued-token quota)."""
        row = self.db.execute("SELECT COALESCE(SUM(enqueued_tokens), 0) FROM batches WHERE model IS ? AND status IN "
                              "('in_progress', 'finalizing')", (model,)).fetchone()
        return int(row[0])

    def done_ids(self, batch_id: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT custom_id FROM results WHERE batch_id = ?", (batch_id,))}

    def iter_results(self, batch_id: str) -> Iterator[tuple[str, int, bool, bytes]]:
        cur = self.db.execute("SELECT custom_id, line, ok, data FROM results WHERE batch_id = ? ORDER BY line",
                              (batch_id,))
        for r in cur:
            yield r[0], r[1], bool(r[2]), r[3]


def _db_value(v: Any) -> Any:
    return orjson.dumps(v).decode() if isinstance(v, dict | list) else v
