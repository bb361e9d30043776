"""The SQLite server store's read-only queries for the dashboard and /metrics (mixed into `SqliteStore`).

They only read what the write path (`store/sqlite.py`) committed, need none of its locking, and are what
a reader of the dashboard or the metrics looks for; kept apart, the write path reads in one sitting.
Every figure is what the rows say: counts, sums and duration buckets come from the batches table
itself, and pages use the (owner, seq) index, so a page costs the same with 10 batches or 10,000.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from coldbatch.core.status import BatchStatus
from coldbatch.store.records import LoggedRow
from coldbatch.store.shared_sql import TERMINAL as _TERMINAL
from coldbatch.store.shared_sql import owner_filter


class SqliteReports:
    """Dashboard pages and /metrics totals over `self.db` (the store's connection for this thread)."""

    @property
    def db(self) -> sqlite3.Connection:
        raise NotImplementedError  # pragma: no cover - SqliteStore's connection

    def batch_page(
        self, owner: str | None, *, offset: int, limit: int, status: str | None = None
    ) -> list[dict[str, Any]]:
        """One page of batches, newest first (`owner` None: every owner). Uses the (owner, seq) index, so
        a page costs the same with 10 batches or 10,000."""
        where, args = owner_filter("?", owner, status)
        return [
            dict(r)
            for r in self.db.execute(
                f"SELECT * FROM batches{where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]
            )
        ]

    def file_page(self, owner: str | None, *, offset: int, limit: int) -> list[dict[str, Any]]:
        """One page of live files, newest first (`owner` None: every owner)."""
        where, args = owner_filter("?", owner, None)
        where += " AND deleted = 0" if where else " WHERE deleted = 0"
        return [
            dict(r)
            for r in self.db.execute(
                f"SELECT * FROM files{where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]
            )
        ]

    def batch_status_counts(self, owner: str | None) -> dict[str, int]:
        where, args = owner_filter("?", owner, None)
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
