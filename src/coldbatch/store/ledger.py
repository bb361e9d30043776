"""The job ledger in SQLite: one file under COLDBATCH_HOME that makes every paid step exactly-once.

A *unit* is one submission of one request file (a prepared shard, or a retry file of failed rows). It
moves through `core.unit_state.UnitState`; the state that announces a remote call (`uploading`,
`creating`) is committed BEFORE the call, with the time of the intent. After a crash, a unit found in
`uploading`/`creating` is reconciled against the provider (a file with the unit's unique filename; a
batch with the unit's metadata tag, newer than the intent) before anything is sent again. Per-row
results are upserted in the same transaction that marks the unit `collected`, so collection is never
repeated and never half-done. Every state change is compare-and-set against the transition table and
leaves one row in `unit_events` (`job_events` for the job), so two processes never both win a step.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from coldbatch.core.unit_state import JobStatus, UnitState, job_allowed_from, unit_allowed_from
from coldbatch.store import sqlite_db
from coldbatch.store.records import JobRecord, Outcome, Row, UnitRecord, job_status

logger = logging.getLogger(__name__)

#: the ledger schema's migrations (`store/sqlite_db.py` applies them)
MIGRATIONS = "coldbatch.store.migrations.ledger"
#: the unit columns a state change may set besides `state` (anything else is a programming error)
UNIT_FIELDS = frozenset(
    {
        "intent_at",
        "file_id",
        "batch_id",
        "batch_status",
        "output_file_id",
        "error_file_id",
        "detail",
        "remote_cleaned",
        "try",
    }
)
#: job columns `set_job` writes (JSON-encoded when a dict or list)
JOB_FIELDS = frozenset({"status", "options", "estimate", "report"})

#: a row's latest outcome replaces the earlier one unless that was a success; tokens add up over attempts
_UPSERT_RESULT = (
    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (job_id, custom_id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, "
    "content = excluded.content, error_code = excluded.error_code, error_message = excluded.error_message, "
    "confidence = excluded.confidence, "
    "prompt_tokens = results.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = results.completion_tokens + excluded.completion_tokens, "
    "cached_tokens = results.cached_tokens + excluded.cached_tokens WHERE results.state != 'ok'"
)


def json_column(v: Any) -> Any:
    """A job column's value as stored: a mapping or list as JSON text (a read-only record mapping included)."""
    if isinstance(v, Mapping):
        return orjson.dumps(dict(v)).decode()
    return orjson.dumps(v).decode() if isinstance(v, list) else v


def _result_row(job_id: str, o: Outcome, attempts: int) -> tuple[Any, ...]:
    """One outcome as `_UPSERT_RESULT`'s parameters, in the results table's column order: batch
    collection and sync results write the same row, so the order is spelled once."""
    return (
        job_id,
        o.custom_id,
        o.state,
        attempts,
        o.content,
        o.error_code,
        o.error_message,
        o.prompt_tokens,
        o.completion_tokens,
        o.cached_tokens,
        o.confidence,
    )


class Ledger:
    """One SQLite file, one connection (the ledger is used from the thread that opened it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite_db.connect(path)
        sqlite_db.migrate(self.db, MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Tx:
        return _Tx(self.db)

    # -- jobs ---------------------------------------------------------------------------------------------
    def create_job(self, job_id: str, input_path: str, output_path: str, options: Mapping[str, Any]) -> None:
        now = int(time.time())
        with self._tx():
            self.db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                (job_id, now, JobStatus.PREPARING.value, input_path, output_path, json_column(options), now),
            )
            self.db.execute("INSERT INTO job_events VALUES (?, NULL, ?, ?)", (job_id, JobStatus.PREPARING.value, now))

    def job(self, job_id: str) -> JobRecord | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.of(row)

    def job_status(self, job_id: str) -> JobStatus | None:
        row = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_status(job_id, row[0])

    def jobs(self) -> list[JobRecord]:
        return [JobRecord.of(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY created_at DESC, id")]

    def set_job(self, job_id: str, **fields: Any) -> bool:
        """Write the job's options / estimate / report, and its status through the transition table, in one
        step; False (and nothing written) if the status may not follow the current one."""
        unknown = set(fields) - JOB_FIELDS
        if unknown:
            raise ValueError(f"set_job: no job field {sorted(unknown)}")
        to = JobStatus(fields.pop("status")) if "status" in fields else None
        with self._tx():
            if to is not None and not self._move_job(job_id, to):
                return False
            if fields:
                fields["updated_at"] = int(time.time())
                vals = [json_column(v) for v in fields.values()]
                self.db.execute(
                    f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", [*vals, job_id]
                )
        return True

    def move_job(self, job_id: str, to: JobStatus) -> bool:
        """Compare-and-set the job's status; False if the job is not in a status `to` may follow."""
        with self._tx():
            return self._move_job(job_id, to)

    def _move_job(self, job_id: str, to: JobStatus) -> bool:
        row = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        frm = sorted(s.value for s in job_allowed_from(to))
        now = int(time.time())
        cur = self.db.execute(
            f"UPDATE jobs SET status = ?, updated_at = ? WHERE id = ? AND status IN ({', '.join('?' * len(frm))})",
            (to.value, now, job_id, *frm),
        )
        if cur.rowcount != 1:
            logger.warning(
                "job %s: status %s may not follow %s; left as it is",
                job_id,
                to.value,
                row[0] if row else "(no such job)",
            )
            return False
        self.db.execute("INSERT INTO job_events VALUES (?, ?, ?, ?)", (job_id, row[0], to.value, now))
        return True

    def job_events(self, job_id: str) -> list[tuple[str | None, str]]:
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT from_status, to_status FROM job_events WHERE job_id = ? ORDER BY rowid", (job_id,)
            )
        ]

    # -- units --------------------------------------------------------------------------------------------
    def add_units(self, job_id: str, units: Iterable[dict[str, Any]]) -> None:
        """Plan units, all or none; a (round, shard) the job already has is left as it is (idempotent)."""
        now = int(time.time())
        with self._tx():
            for u in units:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO units (job_id, round, shard, path, requests, bytes, sha256, model, tokens, "
                    "state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?)",
                    (
                        job_id,
                        u["round"],
                        u["shard"],
                        u["path"],
                        u["requests"],
                        u["bytes"],
                        u["sha256"],
                        u["model"],
                        u.get("tokens", 0),
                        now,
                    ),
                )
                if cur.rowcount == 1:
                    self.db.execute(
                        "INSERT INTO unit_events VALUES (?, NULL, 'planned', ?, NULL)", (cur.lastrowid, now)
                    )

    def units(self, job_id: str, states: Sequence[str] | None = None) -> list[UnitRecord]:
        sql, args = "SELECT * FROM units WHERE job_id = ?", [job_id]
        if states:
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args += [str(s) for s in states]
        return [UnitRecord.of(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def max_round(self, job_id: str) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(round), 0) FROM units WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0])

    def move_unit(self, unit_id: int, to: UnitState, **fields: Any) -> bool:
        """Compare-and-set the unit's state to `to` (and its columns `fields`); False, nothing written, if
        its state is not one `to` may follow."""
        with self._tx():
            return self._move_unit(unit_id, to, fields)

    def _move_unit(self, unit_id: int, to: UnitState, fields: dict[str, Any]) -> bool:
        unknown = set(fields) - UNIT_FIELDS
        if unknown:
            raise ValueError(f"move_unit: no unit field {sorted(unknown)}")
        row = self.db.execute("SELECT state FROM units WHERE id = ?", (unit_id,)).fetchone()
        frm = sorted(s.value for s in unit_allowed_from(to))
        now = int(time.time())
        sets = {"state": to.value, **fields, "updated_at": now}
        assign = ", ".join(f'"{k}" = ?' for k in sets)
        cur = self.db.execute(
            f"UPDATE units SET {assign} WHERE id = ? AND state IN ({', '.join('?' * len(frm))})",
            (*sets.values(), unit_id, *frm),
        )
        if cur.rowcount != 1:
            return False
        self.db.execute(
            "INSERT INTO unit_events VALUES (?, ?, ?, ?, ?)", (unit_id, row[0], to.value, now, fields.get("detail"))
        )
        return True

    def set_batch_status(self, unit_id: int, status: str | None) -> None:
        self.db.execute(
            "UPDATE units SET batch_status = ?, updated_at = ? WHERE id = ?", (status, int(time.time()), unit_id)
        )

    def mark_cleaned(self, unit_id: int) -> None:
        self.db.execute("UPDATE units SET remote_cleaned = 1, updated_at = ? WHERE id = ?", (int(time.time()), unit_id))

    def unit_events(self, unit_id: int) -> list[tuple[str | None, str]]:
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT from_state, to_state FROM unit_events WHERE unit_id = ? ORDER BY rowid", (unit_id,)
            )
        ]

    # -- results ------------------------------------------------------------------------------------------
    def collect(
        self,
        unit: UnitRecord,
        outcomes: Iterable[Outcome],
        *,
        state: UnitState = UnitState.COLLECTED,
        **unit_fields: Any,
    ) -> dict[str, int]:
        """Upsert a unit's outcomes and move it to `state` (collected, or failed), atomically.

        A success is never overwritten, and a unit already collected is not collected twice (its tokens would
        count twice): that returns all-zero counts and changes nothing.
        """
        counts = {"ok": 0, "retry": 0, "failed": 0}
        with self._tx():
            if not self._move_unit(unit.id, UnitState(state), unit_fields):
                return counts
            rows = []
            for o in outcomes:
                counts[o.state] += 1
                rows.append(_result_row(unit.job_id, o, unit.round))
            self.db.executemany(_UPSERT_RESULT, rows)
        return counts

    def record_results(self, job_id: str, outcomes: Sequence[Outcome], *, attempts: int = 1) -> None:
        """Upsert results that arrived one by one (sync mode), in one transaction; a success is never overwritten."""
        with self._tx():
            self.db.executemany(_UPSERT_RESULT, [_result_row(job_id, o, attempts) for o in outcomes])

    def add_rescued(self, job_id: str, ids: Sequence[str]) -> None:
        with self._tx():
            self.db.executemany("INSERT OR IGNORE INTO rescued VALUES (?, ?)", [(job_id, i) for i in ids])

    def rescued_summary(self, job_id: str) -> dict[str, int]:
        """Requests a deadline rescue sent sync, the rows they answered, and their tokens."""
        n, ok, p, c = self.db.execute(
            "SELECT COUNT(*), SUM(r.state = 'ok'), SUM(r.prompt_tokens), SUM(r.completion_tokens) FROM rescued x "
            "JOIN results r ON r.job_id = x.job_id AND r.custom_id = x.custom_id WHERE x.job_id = ?",
            (job_id,),
        ).fetchone()
        rows = self.db.execute(
            "SELECT COUNT(*) FROM row_keys k JOIN rescued x ON x.job_id = k.job_id AND "
            "x.custom_id = k.key WHERE k.job_id = ?",
            (job_id,),
        ).fetchone()[0]
        return {
            "requests": n or 0,
            "succeeded": ok or 0,
            "rows": rows or n or 0,
            "prompt_tokens": p or 0,
            "completion_tokens": c or 0,
        }

    def answered_ids(self, job_id: str) -> set[str]:
        """custom_ids with a final result (ok or failed): what a resumed sync job must not send again."""
        return {
            r[0]
            for r in self.db.execute(
                "SELECT custom_id FROM results WHERE job_id = ? AND state IN ('ok', 'failed')", (job_id,)
            )
        }

    def retry_ids(self, job_id: str) -> set[str]:
        return {
            r[0]
            for r in self.db.execute("SELECT custom_id FROM results WHERE job_id = ? AND state = 'retry'", (job_id,))
        }

    def give_up(self, job_id: str, ids: Iterable[str]) -> None:
        with self._tx():
            self.db.executemany(
                "UPDATE results SET state = 'failed' WHERE job_id = ? AND custom_id = ?", [(job_id, i) for i in ids]
            )

    def add_row_keys(self, job_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        """Record which question each row asked (idempotent)."""
        with self._tx():
            self.db.executemany(
                "INSERT OR IGNORE INTO row_keys VALUES (?, ?, ?)", [(job_id, cid, key) for cid, key in pairs]
            )

    def rows_per_key(self, job_id: str) -> dict[str, int]:
        """How many rows asked each question of a deduplicated job ({} for a job sent row by row)."""
        return {
            k: int(n)
            for k, n in self.db.execute("SELECT key, COUNT(*) FROM row_keys WHERE job_id = ? GROUP BY key", (job_id,))
        }

    def keyed(self, job_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM row_keys WHERE job_id = ? LIMIT 1", (job_id,)).fetchone() is not None

    def record_cached(self, job_id: str, outcomes: Iterable[Outcome]) -> None:
        """Results answered without sending (cache hits; --cache-only misses): attempts 0, no tokens billed."""
        with self._tx():
            self.db.executemany(
                "INSERT INTO results VALUES (?, ?, ?, 0, ?, ?, ?, 0, 0, 0, ?) ON CONFLICT (job_id, custom_id) "
                "DO NOTHING",
                [
                    (job_id, o.custom_id, o.state, o.content, o.error_code, o.error_message, o.confidence)
                    for o in outcomes
                ],
            )

    def results_for(self, job_id: str, ids: Sequence[str], *, keyed: bool = False) -> dict[str, Row]:
        """Results by row custom_id; for a deduplicated job, through the row's question key."""
        out: dict[str, Row] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" * len(part))
            if keyed:
                sql = (
                    f"SELECT k.custom_id AS row_id, r.* FROM row_keys k JOIN results r ON r.job_id = k.job_id AND "
                    f"r.custom_id = k.key WHERE k.job_id = ? AND k.custom_id IN ({marks})"
                )
            else:
                sql = f"SELECT custom_id AS row_id, * FROM results WHERE job_id = ? AND custom_id IN ({marks})"
            for r in self.db.execute(sql, [job_id, *part]):
                out[r["row_id"]] = dict(r)
        return out

    def row_counts(self, job_id: str) -> dict[str, int]:
        """Rows per final state for a deduplicated job (each question's state counted once per row)."""
        rows = self.db.execute(
            "SELECT r.state, COUNT(*) FROM row_keys k JOIN results r ON r.job_id = k.job_id AND "
            "r.custom_id = k.key WHERE k.job_id = ? GROUP BY r.state",
            (job_id,),
        ).fetchall()
        return {state: int(n) for state, n in rows}

    def summary(self, job_id: str) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT COUNT(*), SUM(state = 'ok'), SUM(state = 'failed'), SUM(state = 'retry'), SUM(prompt_tokens), "
            "SUM(completion_tokens), SUM(cached_tokens), SUM(attempts > 1) FROM results WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        codes = dict(
            self.db.execute(
                "SELECT error_code, COUNT(*) FROM results WHERE job_id = ? AND state = 'failed' GROUP BY error_code",
                (job_id,),
            ).fetchall()
        )
        return {
            "results": row[0],
            "succeeded": row[1] or 0,
            "failed": row[2] or 0,
            "pending_retry": row[3] or 0,
            "prompt_tokens": row[4] or 0,
            "completion_tokens": row[5] or 0,
            "cached_tokens": row[6] or 0,
            "retried_rows": row[7] or 0,
            "failed_by_code": codes,
        }

    def iter_results(self, job_id: str) -> Iterator[Row]:
        for r in self.db.execute("SELECT * FROM results WHERE job_id = ?", (job_id,)):
            yield dict(r)


class _Tx:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error); nested use joins the open transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
