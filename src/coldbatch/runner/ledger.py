"""The job ledger: one SQLite file under COLDBATCH_HOME that makes every paid step exactly-once.

A *unit* is one submission of one request file (a prepared shard, or a retry file of failed rows).
It moves `planned → uploading → uploaded → creating → created → collected` (or `failed`), and the
state that announces a remote call (`uploading`, `creating`) is committed BEFORE the call, with the
time of the intent. After a crash, a unit found in `uploading`/`creating` is reconciled against the
provider (a file with the unit's unique filename; a batch with the unit's metadata tag, newer than the
intent) before anything is sent again. Per-row results are upserted in the same transaction that
marks the unit `collected`, so collection is never repeated and never half-done.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    input_path  TEXT NOT NULL,
    output_path TEXT NOT NULL,
    options     TEXT NOT NULL,
    estimate    TEXT,
    report      TEXT,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         TEXT NOT NULL,
    round          INTEGER NOT NULL,
    shard          INTEGER NOT NULL,
    try            INTEGER NOT NULL DEFAULT 1,
    path           TEXT NOT NULL,
    requests       INTEGER NOT NULL,
    bytes          INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    model          TEXT NOT NULL,
    tokens         INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL,
    intent_at      INTEGER,
    file_id        TEXT,
    batch_id       TEXT,
    batch_status   TEXT,
    output_file_id TEXT,
    error_file_id  TEXT,
    detail         TEXT,
    remote_cleaned INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS units_job ON units (job_id, state);
CREATE UNIQUE INDEX IF NOT EXISTS units_key ON units (job_id, round, shard);
-- Deduplicated jobs: which question (request key, the custom_id it was sent under) each row asked.
CREATE TABLE IF NOT EXISTS row_keys (
    job_id     TEXT NOT NULL,
    custom_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (job_id, custom_id)
) WITHOUT ROWID;
-- Requests a deadline rescue sent through the synchronous API (custom_id as sent: a row id or a key).
CREATE TABLE IF NOT EXISTS rescued (
    job_id     TEXT NOT NULL,
    custom_id  TEXT NOT NULL,
    PRIMARY KEY (job_id, custom_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    job_id            TEXT NOT NULL,
    custom_id         TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    content           TEXT,
    error_code        TEXT,
    error_message     TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    confidence        REAL,
    PRIMARY KEY (job_id, custom_id)
) WITHOUT ROWID;
"""

#: unit states, in order; `failed` (the batch failed for good) and `collected` are final
PLANNED, UPLOADING, UPLOADED, CREATING, CREATED, COLLECTED, FAILED = (
    "planned", "uploading", "uploaded", "creating", "created", "collected", "failed")
OPEN_STATES = (PLANNED, UPLOADING, UPLOADED, CREATING, CREATED)

#: a row's latest outcome replaces the earlier one unless that was a success; tokens add up over attempts
_UPSERT_RESULT = (
    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (job_id, custom_id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, "
    "content = excluded.content, error_code = excluded.error_code, error_message = excluded.error_message, "
    "confidence = excluded.confidence, "
    "prompt_tokens = results.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = results.completion_tokens + excluded.completion_tokens, "
    "cached_tokens = results.cached_tokens + excluded.cached_tokens WHERE results.state != 'ok'")


@dataclass
class Outcome:
    """One request's result as collected."""

    custom_id: str
    state: str  # ok | retry | failed
    content: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    confidence: float | None = None  #: a label answer's probability, from the provider's logprobs (confidence.py)


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
        if "confidence" not in columns:  # a ledger made before label confidences were kept
            self.db.execute("ALTER TABLE results ADD COLUMN confidence REAL")

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Tx:
        return _Tx(self.db)

    # -- jobs ---------------------------------------------------------------------------------------------
    def create_job(self, job_id: str, input_path: str, output_path: str, options: dict[str, Any]) -> None:
        now = int(time.time())
        self.db.execute("INSERT INTO jobs VALUES (?, ?, 'preparing', ?, ?, ?, NULL, NULL, ?)",
                        (job_id, now, input_path, output_path, orjson.dumps(options).decode(), now))

    def job(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        for key in ("options", "estimate", "report"):
            out[key] = orjson.loads(out[key]) if out[key] else None
        return out

    def jobs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT id, created_at, status, input_path, output_path, updated_at "
                                                 "FROM jobs ORDER BY created_at DESC, id")]

    def set_job(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = int(time.time())
        vals = [orjson.dumps(v).decode() if isinstance(v, dict | list) else v for v in fields.values()]
        self.db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", [*vals, job_id])

    # -- units --------------------------------------------------------------------------------------------
    def add_units(self, job_id: str, units: Iterable[dict[str, Any]]) -> None:
        """Plan units, all or none; a (round, shard) the job already has is left as it is (idempotent)."""
        now = int(time.time())
        with self._tx():
            for u in units:
                self.db.execute("INSERT OR IGNORE INTO units (job_id, round, shard, path, requests, bytes, sha256, "
                                "model, tokens, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?)",
                                (job_id, u["round"], u["shard"], u["path"], u["requests"], u["bytes"], u["sha256"],
                                 u["model"], u.get("tokens", 0), now))

    def units(self, job_id: str, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM units WHERE job_id = ?", [job_id]
        if states:
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args += list(states)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def update_unit(self, unit_id: int, **fields: Any) -> None:
        fields["updated_at"] = int(time.time())
        self.db.execute(f"UPDATE units SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                        [*fields.values(), unit_id])

    def max_round(self, job_id: str) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(round), 0) FROM units WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0])

    # -- results ------------------------------------------------------------------------------------------
    def collect(self, unit: dict[str, Any], outcomes: Iterable[Outcome], *, state: str = COLLECTED,
                **unit_fields: Any) -> dict[str, int]:
        """Upsert a unit's outcomes and mark it `state` (collected, or failed), atomically.

        A success is never overwritten, and a unit already collected is not collected twice (its tokens would
        count twice): that returns all-zero counts and changes nothing.
        """
        counts = {"ok": 0, "retry": 0, "failed": 0}
        with self._tx():
            row = self.db.execute("SELECT state FROM units WHERE id = ?", (unit["id"],)).fetchone()
            if row is not None and row[0] in (COLLECTED, FAILED):
                return counts
            rows = []
            for o in outcomes:
                counts[o.state] += 1
                rows.append((unit["job_id"], o.custom_id, o.state, unit["round"], o.content, o.error_code,
                             o.error_message, o.prompt_tokens, o.completion_tokens, o.cached_tokens, o.confidence))
            self.db.executemany(_UPSERT_RESULT, rows)
            self.update_unit(unit["id"], state=state, **unit_fields)
        return counts

    def record_results(self, job_id: str, outcomes: Sequence[Outcome], *, attempts: int = 1) -> None:
        """Upsert results that arrived one by one (sync mode), in one transaction; a success is never overwritten."""
        with self._tx():
            self.db.executemany(_UPSERT_RESULT, [
                (job_id, o.custom_id, o.state, attempts, o.content, o.error_code, o.error_message, o.prompt_tokens,
                 o.completion_tokens, o.cached_tokens, o.confidence) for o in outcomes])

    def add_rescued(self, job_id: str, ids: Sequence[str]) -> None:
        with self._tx():
            self.db.executemany("INSERT OR IGNORE INTO rescued VALUES (?, ?)", [(job_id, i) for i in ids])

    def rescued_summary(self, job_id: str) -> dict[str, int]:
        """Requests a deadline rescue sent sync, the rows they answered, and their tokens."""
        n, ok, p, c = self.db.execute(
            "SELECT COUNT(*), SUM(r.state = 'ok'), SUM(r.prompt_tokens), SUM(r.completion_tokens) FROM rescued x "
            "JOIN results r ON r.job_id = x.job_id AND r.custom_id = x.custom_id WHERE x.job_id = ?",
            (job_id,)).fetchone()
        rows = self.db.execute("SELECT COUNT(*) FROM row_keys k JOIN rescued x ON x.job_id = k.job_id AND "
                               "x.custom_id = k.key WHERE k.job_id = ?", (job_id,)).fetchone()[0]
        return {"requests": n or 0, "succeeded": ok or 0, "rows": rows or n or 0, "prompt_tokens": p or 0,
                "completion_tokens": c or 0}

    def answered_ids(self, job_id: str) -> set[str]:
        """custom_ids with a final result (ok or failed): what a resumed sync job must not send again."""
        return {r[0] for r in self.db.execute(
            "SELECT custom_id FROM results WHERE job_id = ? AND state IN ('ok', 'failed')", (job_id,))}

    def retry_ids(self, job_id: str) -> set[str]:
        return {r[0] for r in self.db.execute(
            "SELECT custom_id FROM results WHERE job_id = ? AND state = 'retry'", (job_id,))}

    def give_up(self, job_id: str, ids: Iterable[str]) -> None:
        with self._tx():
            self.db.executemany("UPDATE results SET state = 'failed' WHERE job_id = ? AND custom_id = ?",
                                [(job_id, i) for i in ids])

    def add_row_keys(self, job_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        """Record which question each row asked (idempotent)."""
        with self._tx():
            self.db.executemany("INSERT OR IGNORE INTO row_keys VALUES (?, ?, ?)",
                                [(job_id, cid, key) for cid, key in pairs])

    def rows_per_key(self, job_id: str) -> dict[str, int]:
        """How many rows asked each question of a deduplicated job ({} for a job sent row by row)."""
        return dict(self.db.execute("SELECT key, COUNT(*) FROM row_keys WHERE job_id = ? GROUP BY key", (job_id,)))

    def keyed(self, job_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM row_keys WHERE job_id = ? LIMIT 1", (job_id,)).fetchone() is not None

    def record_cached(self, job_id: str, outcomes: Iterable[Outcome]) -> None:
        """Results answered without sending (cache hits; --cache-only misses): attempts 0, no tokens billed."""
        with self._tx():
            self.db.executemany(
                "INSERT INTO results VALUES (?, ?, ?, 0, ?, ?, ?, 0, 0, 0, ?) ON CONFLICT (job_id, custom_id) "
                "DO NOTHING",
                [(job_id, o.custom_id, o.state, o.content, o.error_code, o.error_message, o.confidence)
                 for o in outcomes])

    def results_for(self, job_id: str, ids: Sequence[str], *, keyed: bool = False) -> dict[str, dict[str, Any]]:
        """Results by row custom_id; for a deduplicated job, through the row's question key."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ", ".join("?" * len(part))
            if keyed:
                sql = (f"SELECT k.custom_id AS row_id, r.* FROM row_keys k JOIN results r ON r.job_id = k.job_id AND "
                       f"r.custom_id = k.key WHERE k.job_id = ? AND k.custom_id IN ({marks})")
            else:
                sql = f"SELECT custom_id AS row_id, * FROM results WHERE job_id = ? AND custom_id IN ({marks})"
            for r in self.db.execute(sql, [job_id, *part]):
                out[r["row_id"]] = dict(r)
        return out

    def row_counts(self, job_id: str) -> dict[str, int]:
        """Rows per final state for a deduplicated job (each question's state counted once per row)."""
        rows = self.db.execute("SELECT r.state, COUNT(*) FROM row_keys k JOIN results r ON r.job_id = k.job_id AND "
                               "r.custom_id = k.key WHERE k.job_id = ? GROUP BY r.state", (job_id,)).fetchall()
        return {state: n for state, n in rows}

    def summary(self, job_id: str) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT COUNT(*), SUM(state = 'ok'), SUM(state = 'failed'), SUM(state = 'retry'), SUM(prompt_tokens), "
            "SUM(completion_tokens), SUM(cached_tokens), SUM(attempts > 1) FROM results WHERE job_id = ?",
            (job_id,)).fetchone()
        codes = dict(self.db.execute("SELECT error_code, COUNT(*) FROM results WHERE job_id = ? AND state = 'failed' "
                                     "GROUP BY error_code", (job_id,)).fetchall())
        return {"results": row[0], "succeeded": row[1] or 0, "failed": row[2] or 0, "pending_retry": row[3] or 0,
                "prompt_tokens": row[4] or 0, "completion_tokens": row[5] or 0, "cached_tokens": row[6] or 0,
                "retried_rows": row[7] or 0, "failed_by_code": codes}

    def iter_results(self, job_id: str) -> Iterator[dict[str, Any]]:
        for r in self.db.execute("SELECT * FROM results WHERE job_id = ?", (job_id,)):
            yield dict(r)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
