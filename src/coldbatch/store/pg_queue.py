"""The PostgreSQL store's results log and work queue (mixed into `PgStore`).

Work: a batch entering `in_progress` gets its input lines in chunks (line and byte ranges). A worker
claims the oldest open chunk of the oldest running batch with `FOR UPDATE SKIP LOCKED` (two workers
never wait for, nor take, the same row), under a lease it renews (`heartbeat`) while it works; a chunk
whose lease ran out (its worker died or hung) is claimed again, and the new worker skips every line
already logged. Results: the log's primary key (batch, line) makes a line written once whatever
happens, and the counts move in the same transaction by the rows the INSERT really added. Batch
leases: one serve process at a time coordinates a batch (validates, finalizes, expires it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from psycopg_pool import ConnectionPool

from coldbatch.store import shared_sql
from coldbatch.store.records import LoggedRow, ResultRow
from coldbatch.store.shared_sql import TERMINAL

_LOGGING = ["in_progress", "cancelling"]
_NOW = "extract(epoch from clock_timestamp())"

_RECORD = (
    "INSERT INTO results (batch_id, line, custom_id, ok, data) SELECT %s, r.line, r.cid, r.ok, r.data"
    " FROM unnest(%b::int[], %b::text[], %b::bool[], %b::bytea[]) AS r(line, cid, ok, data)"  # binary: no hex
    " ON CONFLICT DO NOTHING RETURNING line"
)
_CLAIM = (
    f"UPDATE chunks c SET worker = %s, lease_until = {_NOW} + %s, attempts = c.attempts + 1 FROM ("
    " SELECT c2.batch_id, c2.chunk FROM chunks c2 JOIN batches b ON b.id = c2.batch_id"
    f" WHERE NOT c2.done AND (c2.lease_until IS NULL OR c2.lease_until < {_NOW}) AND b.status = 'in_progress'"
    f" AND b.expires_at > {_NOW}"  # (an expired batch's chunks wait for its coordinator, not for workers)
    " ORDER BY b.seq, c2.chunk LIMIT 1 FOR UPDATE OF c2 SKIP LOCKED) AS pick"
    " WHERE c.batch_id = pick.batch_id AND c.chunk = pick.chunk RETURNING c.*"
)


class QueueMixin:
    pool: ConnectionPool[Any]

    def _one(self, sql: str, args: Any = None) -> dict[str, Any] | None:
        raise NotImplementedError  # PgStore's

    def _all(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _run(self, sql: str, args: Any = None) -> int:
        raise NotImplementedError

    # -- results ----------------------------------------------------------------------------------------
    def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        """Log finished requests and advance the counts and token usage, atomically; returns how many rows
        were new. Nothing is written unless the batch is `in_progress` or `cancelling` (the row lock taken
        here orders this against a transition to a final status)."""
        if not rows:
            return 0
        with self.pool.connection() as conn, conn.transaction():
            st = conn.execute("SELECT status FROM batches WHERE id = %s FOR UPDATE", (batch_id,)).fetchone()
            if st is None or st["status"] not in _LOGGING:
                return 0
            new = {
                r["line"]
                for r in conn.execute(
                    _RECORD,
                    (
                        batch_id,
                        [r[1] for r in rows],
                        [r[0] for r in rows],
                        [r[2] for r in rows],
                        [r[3] for r in rows],
                    ),
                ).fetchall()
            }
            if not new:
                return 0
            fresh, seen = [], set()
            for r in rows:
                if r[1] in new and r[1] not in seen:
                    seen.add(r[1])
                    fresh.append(r)
            conn.execute(*shared_sql.advance_counts("%s", batch_id, fresh))
        return len(fresh)

    def done_lines(self, batch_id: str, first: int = 0, last: int = 1 << 31) -> set[int]:
        """Input lines of the batch (within [first, last]) whose result is logged."""
        return {
            r["line"]
            for r in self._all(
                "SELECT line FROM results WHERE batch_id = %s AND line BETWEEN %s AND %s", (batch_id, first, last)
            )
        }

    def iter_results(self, batch_id: str) -> Iterator[LoggedRow]:
        """The log in input order, through a server-side cursor (a batch never sits in memory)."""
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(name="results") as cur:
            cur.itersize = 2000
            cur.execute("SELECT custom_id, line, ok, data FROM results WHERE batch_id = %s ORDER BY line", (batch_id,))
            for r in cur:
                yield r["custom_id"], r["line"], bool(r["ok"]), bytes(r["data"])

    def failed_results(self, batch_id: str, limit: int) -> list[LoggedRow]:
        return [
            (r["custom_id"], r["line"], False, bytes(r["data"]))
            for r in self._all(
                "SELECT custom_id, line, data FROM results WHERE batch_id = %s AND NOT ok ORDER BY line LIMIT %s",
                (batch_id, limit),
            )
        ]

    def purge_results(self, batch_id: str, chunk: int = 5000) -> int:
        """Delete the log (and work queue) of a terminal batch in small transactions; never a live one's."""
        total = 0
        while True:
            n = self._run(
                "DELETE FROM results WHERE batch_id = %s AND line IN (SELECT line FROM results WHERE batch_id = %s"
                " LIMIT %s) AND NOT EXISTS (SELECT 1 FROM batches WHERE id = %s AND NOT (status = ANY(%s)))",
                (batch_id, batch_id, chunk, batch_id, list(TERMINAL)),
            )
            total += n
            if n < chunk:
                break
        self._run(
            "DELETE FROM chunks WHERE batch_id = %s AND NOT EXISTS (SELECT 1 FROM batches WHERE id = %s"
            " AND NOT (status = ANY(%s)))",
            (batch_id, batch_id, list(TERMINAL)),
        )
        return total

    def finished_logs(self, settled_seconds: float = 0.0) -> list[str]:
        """Batches terminal (or gone) for at least `settled_seconds` that still have a log or a queue. The
        delay lets a coordinator that lost its lease mid-finalize see the whole log, never a purged half."""
        ended = "COALESCE(b.completed_at, b.failed_at, b.expired_at, b.cancelled_at, 0)"
        return [
            r["batch_id"]
            for r in self._all(
                "SELECT DISTINCT q.batch_id FROM (SELECT DISTINCT batch_id FROM results UNION SELECT DISTINCT batch_id"
                " FROM chunks) q LEFT JOIN batches b ON b.id = q.batch_id WHERE b.id IS NULL OR (b.status = ANY(%s)"
                f" AND {ended} <= extract(epoch from now()) - %s)",
                (list(TERMINAL), settled_seconds),
            )
        ]

    # -- work queue -------------------------------------------------------------------------------------
    def claim_chunk(self, worker: str, lease_seconds: float) -> dict[str, Any] | None:
        """The oldest open chunk of the oldest running batch, leased to `worker`; None if there is none."""
        return self._one(_CLAIM, (worker, lease_seconds))

    def heartbeat(self, batch_id: str, chunk: int, worker: str, lease_seconds: float) -> str | None:
        """Renew the lease; the batch's status, or None when the lease is no longer this worker's."""
        row = self._one(
            f"UPDATE chunks SET lease_until = {_NOW} + %s WHERE batch_id = %s AND chunk = %s AND worker = %s"
            " AND NOT done RETURNING (SELECT status FROM batches WHERE id = %s) AS status",
            (lease_seconds, batch_id, chunk, worker, batch_id),
        )
        return row["status"] if row else None

    def finish_chunk(self, batch_id: str, chunk: int, worker: str) -> bool:
        """Mark the chunk done if every one of its requests is logged; else just give its lease up."""
        with self.pool.connection() as conn, conn.transaction():
            n = conn.execute(
                "UPDATE chunks c SET done = TRUE, lease_until = NULL WHERE batch_id = %s AND chunk = %s AND"
                " (SELECT COUNT(*) FROM results r WHERE r.batch_id = c.batch_id AND r.line BETWEEN c.first_line"
                " AND c.last_line) >= c.requests",
                (batch_id, chunk),
            ).rowcount
            if not n:
                conn.execute(
                    "UPDATE chunks SET lease_until = NULL, worker = NULL WHERE batch_id = %s AND chunk = %s"
                    " AND worker = %s",
                    (batch_id, chunk, worker),
                )
        return bool(n == 1)

    def release_chunk(self, batch_id: str, chunk: int, worker: str) -> None:
        """Give the lease up at once (a stop, a cancel), so another worker need not wait it out."""
        self._run(
            "UPDATE chunks SET lease_until = NULL, worker = NULL WHERE batch_id = %s AND chunk = %s AND worker = %s",
            (batch_id, chunk, worker),
        )

    def chunk_progress(self, batch_id: str) -> dict[str, int]:
        """open: chunks not done; held: of those, under a live lease; stuck_none: always 0 (for symmetry)."""
        row = self._one(
            f"SELECT COUNT(*) FILTER (WHERE NOT done) AS open, COUNT(*) FILTER (WHERE NOT done AND"
            f" lease_until >= {_NOW}) AS held, COUNT(*) AS chunks FROM chunks WHERE batch_id = %s",
            (batch_id,),
        )
        return {k: int(v) for k, v in (row or {}).items()}

    def lease_batch(self, batch_id: str, owner: str, lease_seconds: float) -> bool:
        """Take (or renew) the right to coordinate the batch; False while another process holds it."""
        return (
            self._run(
                f"UPDATE batches SET lease_owner = %s, lease_until = {_NOW} + %s WHERE id = %s AND (lease_owner = %s"
                f" OR lease_until IS NULL OR lease_until < {_NOW})",
                (owner, lease_seconds, batch_id, owner),
            )
            == 1
        )

    def live_leases(self) -> int:
        """Chunks of unfinished work under a live lease (0 once everything settled: no stuck leases)."""
        row = self._one(f"SELECT COUNT(*) AS n FROM chunks WHERE NOT done AND lease_until >= {_NOW}")
        return int(row["n"]) if row else 0
