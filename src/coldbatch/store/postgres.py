"""Server metadata in PostgreSQL: the same methods as `SqliteStore`, for any number of processes.

The database is the only coordinator (no home-made one): status changes are the same compare-and-set
UPDATEs with an event row in one transaction; the results log has a primary key (batch, line), so a
line is logged once whichever worker or retry produced it, and the counts move by what an INSERT …
ON CONFLICT DO NOTHING really inserted; work is handed out in chunks claimed with `FOR UPDATE SKIP
LOCKED` under a lease (`store/pg_queue.py`). Leases are timed by the database's clock, so hosts whose
clocks disagree still agree on when a lease ran out. One connection pool per process; every method
is one short transaction, safe from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from coldbatch.core.status import TIMESTAMP_FIELD, BatchStatus, allowed_from
from coldbatch.store import shared_sql
from coldbatch.store.pg_queue import QueueMixin
from coldbatch.store.records import BATCH_COLUMNS
from coldbatch.store.shared_sql import TERMINAL

_INSERT_FILE = shared_sql.insert_file("%({})s")
#: any constant: the key of the advisory lock that serializes migrations of processes starting together
_MIGRATION_LOCK = 0x636F6C64


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or used at start: the message names the URL (without password)."""


def redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    user, host, port, db = (info.get(k, "") for k in ("user", "host", "port", "dbname"))
    return f"postgresql://{user}@{host}:{port or 5432}/{db}"


class PgStore(QueueMixin):
    """A pool of connections to one PostgreSQL database (migrated on open)."""

    def __init__(self, url: str, *, max_size: int = 8, migrate: bool = True) -> None:
        self.url = url
        try:  # one plain connection first: its error says what is wrong (the pool's only that it timed out)
            psycopg.connect(url, connect_timeout=5).close()
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to the database {redact(url)}: {str(exc).strip()}") from exc
        try:
            self.pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max_size,
                open=True,
                timeout=10,
                kwargs={"autocommit": True, "row_factory": dict_row},
                name="coldbatch",
            )
            self.pool.wait(timeout=10)
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to the database {redact(url)}: {exc}") from exc
        self._closed = threading.Event()
        if migrate:
            self.migrate()

    def _one(self, sql: str, args: Any = None) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            row: dict[str, Any] | None = conn.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows: list[dict[str, Any]] = conn.execute(sql, args).fetchall()
            return rows

    def _run(self, sql: str, args: Any = None) -> int:
        with self.pool.connection() as conn:
            return int(conn.execute(sql, args).rowcount)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self.pool.close()

    def checkpoint(self) -> tuple[int, int, int]:
        """PostgreSQL checkpoints on its own; kept for the SQLite store's callers."""
        return 0, 0, 0

    # -- schema -----------------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending migrations (store/migrations/postgresql/*.sql), each with its bookkeeping row in one
        transaction, under an advisory lock, so servers started together migrate once."""
        folder = resources.files("coldbatch.store.migrations.postgresql")
        applied = []
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT)")
            done = {r["name"] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
            for entry in sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql")):
                if entry in done:
                    continue
                for statement in folder.joinpath(entry).read_text().split(";"):
                    if statement.strip():
                        conn.execute(statement.encode())
                conn.execute("INSERT INTO schema_migrations VALUES (%s, extract(epoch from now())::bigint)", (entry,))
                applied.append(entry)
        return applied

    # -- files ------------------------------------------------------------------------------------------
    def create_file(self, row: dict[str, Any]) -> None:
        self._run(_INSERT_FILE, row)

    def get_file(self, file_id: str, owner: str | None) -> dict[str, Any] | None:
        if owner is None:
            return self._one("SELECT * FROM files WHERE id = %s AND deleted = 0", (file_id,))
        return self._one("SELECT * FROM files WHERE id = %s AND deleted = 0 AND owner = %s", (file_id, owner))

    def list_files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> tuple[list[dict[str, Any]], bool]:
        query, args = shared_sql.files_page("%s", owner, purpose=purpose, after=after, limit=limit, order=order)
        return shared_sql.split_page(self._all(query, args), limit)

    def delete_file(self, file_id: str, owner: str) -> bool:
        return (
            self._run("UPDATE files SET deleted = 1 WHERE id = %s AND owner = %s AND deleted = 0", (file_id, owner))
            == 1
        )

    def expired_files(self, now: int) -> list[str]:
        return [
            r["id"]
            for r in self._all(
                "SELECT id FROM files WHERE deleted = 0 AND expires_at IS NOT NULL AND expires_at <= %s", (now,)
            )
        ]

    def forget_file(self, file_id: str) -> None:
        self._run("UPDATE files SET deleted = 1 WHERE id = %s", (file_id,))

    # -- batches ----------------------------------------------------------------------------------------
    def create_batch(self, row: dict[str, Any]) -> None:
        cols = [c for c in BATCH_COLUMNS if c in row]
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                shared_sql.insert_row("batches", cols, "%({})s"), {c: shared_sql.db_value(row[c]) for c in cols}
            )
            _event(conn, row["id"], None, row["status"], row["created_at"])

    def get_batch(self, batch_id: str, owner: str | None) -> dict[str, Any] | None:
        if owner is None:
            return self._one("SELECT * FROM batches WHERE id = %s", (batch_id,))
        return self._one("SELECT * FROM batches WHERE id = %s AND owner = %s", (batch_id, owner))

    def delete_batch(self, batch_id: str, owner: str) -> bool:
        """Forget a terminal batch of `owner` and its events; False when there is no such terminal batch."""
        with self.pool.connection() as conn, conn.transaction():
            n = conn.execute(
                "DELETE FROM batches WHERE id = %s AND owner = %s AND status = ANY(%s)",
                (batch_id, owner, list(TERMINAL)),
            ).rowcount
            if n == 1:
                conn.execute("DELETE FROM batch_events WHERE batch_id = %s", (batch_id,))
        return bool(n == 1)

    def list_batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        query, args = shared_sql.batches_page("%s", owner, after=after, limit=limit)
        return shared_sql.split_page(self._all(query, args), limit)

    def unfinished_batches(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM batches WHERE NOT (status = ANY(%s)) ORDER BY seq", (list(TERMINAL),))

    def transition(
        self,
        batch_id: str,
        to: BatchStatus,
        now: int,
        *,
        files: Sequence[dict[str, Any]] = (),
        chunks: Sequence[tuple[int, int, int, int, int]] = (),
        **fields: Any,
    ) -> bool:
        """Compare-and-set `status` to `to` (and set its `*_at` plus `fields`); False if not allowed now.

        `files` (result files) are registered, and `chunks` (first line, last line, start byte, end byte,
        requests: the work queue of a batch entering `in_progress`) inserted, in the same transaction."""
        frm = sorted(s.value for s in allowed_from(to))
        sets = {"status": to.value, **fields}
        if to in TIMESTAMP_FIELD:
            sets[TIMESTAMP_FIELD[to]] = now
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT status FROM batches WHERE id = %s FOR UPDATE", (batch_id,)).fetchone()
            if row is None or row["status"] not in frm:
                return False
            conn.execute(
                f"UPDATE batches SET {', '.join(f'{k} = %s' for k in sets)} WHERE id = %s",
                [*(shared_sql.db_value(v) for v in sets.values()), batch_id],
            )
            for f in files:
                conn.execute(_INSERT_FILE + " ON CONFLICT (id) DO UPDATE SET bytes = EXCLUDED.bytes, deleted = 0", f)
            if chunks:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO chunks (batch_id, chunk, first_line, last_line, start_byte, end_byte,"
                        " requests) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(batch_id, i, *c) for i, c in enumerate(chunks)],
                    )
            _event(conn, batch_id, row["status"], to.value, now)
        return True

    def events(self, batch_id: str) -> list[tuple[str | None, str]]:
        return [(r["from_status"], r["to_status"]) for r in self.event_log(batch_id)]

    def event_log(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's status changes, oldest first: from_status, to_status, at (epoch seconds)."""
        return self._all(
            "SELECT from_status, to_status, at FROM batch_events WHERE batch_id = %s ORDER BY seq", (batch_id,)
        )

    # -- dashboard and metrics (read only) ---------------------------------------------------------------
    def batch_page(
        self, owner: str | None, *, offset: int, limit: int, status: str | None = None
    ) -> list[dict[str, Any]]:
        where, args = shared_sql.owner_filter("%s", owner, status)
        return self._all(f"SELECT * FROM batches{where} ORDER BY seq DESC LIMIT %s OFFSET %s", [*args, limit, offset])

    def file_page(self, owner: str | None, *, offset: int, limit: int) -> list[dict[str, Any]]:
        where, args = shared_sql.owner_filter("%s", owner, None)
        where += " AND deleted = 0" if where else " WHERE deleted = 0"
        return self._all(f"SELECT * FROM files{where} ORDER BY seq DESC LIMIT %s OFFSET %s", [*args, limit, offset])

    def batch_status_counts(self, owner: str | None) -> dict[str, int]:
        where, args = shared_sql.owner_filter("%s", owner, None)
        return {
            r["status"]: int(r["n"])
            for r in self._all(f"SELECT status, COUNT(*) AS n FROM batches{where} GROUP BY status", args)
        }

    def batch_totals(
        self, buckets: Sequence[float], *, after: int = 0, upto: int | None = None
    ) -> list[dict[str, Any]]:
        """As `SqliteStore.batch_totals`: per (endpoint, model, status) figures for /metrics."""
        ended = "COALESCE(completed_at, failed_at, expired_at, cancelled_at) - created_at"
        le = "".join(
            f", SUM(CASE WHEN d <= {float(b)!r} THEN 1 ELSE 0 END)::bigint AS le{i}" for i, b in enumerate(buckets)
        )
        rows = self._all(
            "SELECT endpoint, COALESCE(model, '') AS model, status, COUNT(*) AS batches,"
            " SUM(completed)::bigint AS completed, SUM(failed)::bigint AS failed,"
            " SUM(input_tokens)::bigint AS input_tokens, SUM(cached_tokens)::bigint AS cached_tokens,"
            " SUM(output_tokens)::bigint AS output_tokens, COUNT(d) AS ended,"
            f" COALESCE(SUM(d), 0)::bigint AS duration{le}"
            f" FROM (SELECT *, CASE WHEN status = ANY(%s) THEN {ended} END AS d"
            " FROM batches WHERE seq > %s AND seq <= %s) AS t GROUP BY endpoint, model, status",
            [list(TERMINAL), after, (1 << 62) if upto is None else upto],
        )
        return rows

    def settled_seq(self) -> int:
        """The largest seq such that every batch up to it is terminal (its row no longer changes)."""
        row = self._one(
            "SELECT (SELECT MIN(seq) FROM batches WHERE NOT (status = ANY(%s))) - 1 AS a,"
            " (SELECT COALESCE(MAX(seq), 0) FROM batches) AS b",
            (list(TERMINAL),),
        )
        assert row is not None
        return int(row["a"] if row["a"] is not None else row["b"])

    def upload_totals(self, after: int = 0) -> tuple[list[tuple[str, int, int]], int]:
        upto_row = self._one("SELECT COALESCE(MAX(seq), 0) AS m FROM files")
        upto = int(upto_row["m"]) if upto_row else 0
        rows = [
            (r["purpose"], int(r["n"]), int(r["b"]))
            for r in self._all(
                "SELECT purpose, COUNT(*) AS n, COALESCE(SUM(bytes), 0)::bigint AS b FROM files WHERE purpose !="
                " 'batch_output' AND seq > %s AND seq <= %s GROUP BY purpose",
                (after, upto),
            )
        ]
        return rows, upto

    def enqueued_tokens(self, model: str | None) -> int:
        row = self._one(
            "SELECT COALESCE(SUM(enqueued_tokens), 0)::bigint AS n FROM batches WHERE model IS NOT "
            "DISTINCT FROM %s AND status IN ('in_progress', 'finalizing')",
            (model,),
        )
        return int(row["n"]) if row else 0

    # -- blob bookkeeping -------------------------------------------------------------------------------
    def blob_owners(self) -> tuple[set[str], set[str]]:
        """(ids of live files, ids of deleted files that an unfinished batch still reads)."""
        live = {r["id"] for r in self._all("SELECT id FROM files WHERE deleted = 0")}
        in_use = {
            r["input_file_id"]
            for r in self._all("SELECT input_file_id FROM batches WHERE NOT (status = ANY(%s))", (list(TERMINAL),))
        }
        return live, in_use


def _event(conn: psycopg.Connection[Any], batch_id: str, frm: str | None, to: str, at: int) -> None:
    conn.execute(
        "INSERT INTO batch_events (batch_id, from_status, to_status, at) VALUES (%s, %s, %s, %s)",
        (batch_id, frm, to, at),
    )
