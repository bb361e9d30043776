"""What only the SQLite files promise, beyond the contract suite every backend passes.

- Files made by earlier versions still open: a ledger or cache written before they had migrations (with
  or without the confidence column) is adopted as it is, its rows read back, and it takes new writes; a
  server results log written before it was keyed by line survives that migration.
- Migrations apply once each, with their bookkeeping row, all or nothing; a file reopened applies none.
- Logging results checkpoints the WAL on a background thread, not inside the event loop's commits.
"""

from __future__ import annotations

import sqlite3
import threading
from importlib import resources
from pathlib import Path

import pytest

from coldbatch.core.status import BatchStatus as S
from coldbatch.core.unit_state import UnitState
from coldbatch.store import sqlite as sqlite_store
from coldbatch.store import sqlite_db
from coldbatch.store.cache import ResultCache, _checksum
from coldbatch.store.ledger import Ledger
from coldbatch.store.records import Entry, Outcome
from coldbatch.store.sqlite import SqliteStore

#: the ledger's schema as the last release without migrations created it (runner/ledger.py SCHEMA, 2026-11)
OLD_LEDGER = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, status TEXT NOT NULL,
    input_path TEXT NOT NULL, output_path TEXT NOT NULL, options TEXT NOT NULL, estimate TEXT, report TEXT,
    updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS units (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, round INTEGER NOT NULL,
    shard INTEGER NOT NULL, try INTEGER NOT NULL DEFAULT 1, path TEXT NOT NULL, requests INTEGER NOT NULL,
    bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, model TEXT NOT NULL, tokens INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL, intent_at INTEGER, file_id TEXT, batch_id TEXT, batch_status TEXT, output_file_id TEXT,
    error_file_id TEXT, detail TEXT, remote_cleaned INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS units_job ON units (job_id, state);
CREATE UNIQUE INDEX IF NOT EXISTS units_key ON units (job_id, round, shard);
CREATE TABLE IF NOT EXISTS row_keys (job_id TEXT NOT NULL, custom_id TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (job_id, custom_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rescued (job_id TEXT NOT NULL, custom_id TEXT NOT NULL,
    PRIMARY KEY (job_id, custom_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (job_id TEXT NOT NULL, custom_id TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL, content TEXT, error_code TEXT, error_message TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0{confidence}, PRIMARY KEY (job_id, custom_id)) WITHOUT ROWID;
"""
OLD_CACHE = """
CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, content TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, created_at INTEGER NOT NULL, checksum TEXT NOT NULL{confidence})
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_age ON entries (created_at);
"""


def _old_ledger(path: Path, with_confidence: bool) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(OLD_LEDGER.format(confidence=", confidence REAL" if with_confidence else ""))
    db.execute("INSERT INTO jobs VALUES ('j', 1, 'running', '/in', '/out', '{\"mode\":\"batch\"}', NULL, NULL, 1)")
    db.execute(
        "INSERT INTO units (job_id, round, shard, path, requests, bytes, sha256, model, state, batch_id, "
        "updated_at) VALUES ('j', 1, 1, '/s', 2, 10, 'ab', 'm', 'created', 'batch_1', 1)"
    )
    cols = "(job_id, custom_id, state, attempts, content, prompt_tokens)"
    db.execute(f"INSERT INTO results {cols} VALUES ('j', 'a', 'ok', 1, 'yes', 5)")
    db.close()


@pytest.mark.parametrize("with_confidence", [False, True])
def test_a_ledger_from_before_migrations_opens_and_takes_new_writes(tmp_path: Path, with_confidence: bool) -> None:
    path = tmp_path / "ledger.sqlite3"
    _old_ledger(path, with_confidence)
    ledger = Ledger(path)
    job = ledger.job("j")
    assert job is not None and job.status == "running" and job.options == {"mode": "batch"}
    assert ledger.results_for("j", ["a"])["a"]["content"] == "yes"
    unit = ledger.units("j", [UnitState.CREATED])[0]
    assert ledger.collect(unit, [Outcome("b", "ok", "no", confidence=0.75)]) == {"ok": 1, "retry": 0, "failed": 0}
    assert ledger.results_for("j", ["b"])["b"]["confidence"] == 0.75
    assert ledger.unit_events(unit.id) == [("created", "collected")]
    assert ledger.set_job("j", status="done") and ledger.job_events("j") == [("running", "done")]
    ledger.close()
    again = Ledger(path)  # opening again applies nothing twice
    names = [r[0] for r in again.db.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == sqlite_db.migration_names("coldbatch.store.migrations.ledger")
    assert sqlite_db.migrate(again.db, "coldbatch.store.migrations.ledger") == []
    again.close()


@pytest.mark.parametrize("with_confidence", [False, True])
def test_a_cache_from_before_migrations_keeps_its_entries(tmp_path: Path, with_confidence: bool) -> None:
    path = tmp_path / "cache.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(OLD_CACHE.format(confidence=", confidence REAL" if with_confidence else ""))
    db.execute(
        "INSERT INTO entries (key, content, prompt_tokens, completion_tokens, created_at, checksum) "
        "VALUES ('k-1', 'positive', 10, 2, strftime('%s','now'), ?)",
        (_checksum("k-1", "positive", 10, 2),),
    )
    db.close()
    cache = ResultCache(path)
    assert cache.get_many(["k-1"]) == {"k-1": Entry("k-1", "positive", 10, 2)}
    cache.put_many([Entry("k-2", "neutral", 3, 1, 0.5)])
    assert cache.get_many(["k-2"])["k-2"].confidence == 0.5 and cache.corrupt_ignored == 0
    cache.close()


def test_a_migration_that_fails_leaves_no_trace(tmp_path: Path) -> None:
    """The shared helper: a statement that fails rolls back its whole migration and the bookkeeping row."""
    db = sqlite_db.connect(tmp_path / "x.sqlite3")
    db.execute("CREATE TABLE job_events (x TEXT)")  # in the way of 0003's second table
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        sqlite_db.migrate(db, "coldbatch.store.migrations.ledger")
    names = [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == ["0001_init.sql", "0002_results_confidence.sql"]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "unit_events" not in tables and {"jobs", "units", "results"} <= tables


def test_the_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    a = Ledger(path)
    a.create_job("j", "/i", "/o", {})
    a.add_units(
        "j", [{"round": 1, "shard": 1, "path": "/s", "requests": 2, "bytes": 10, "sha256": "ab" * 32, "model": "m"}]
    )
    a.close()
    b = Ledger(path)
    assert b.job("j") is not None and len(b.units("j")) == 1
    b.close()


# -- the server store's file ---------------------------------------------------------------------------------
def test_the_server_schema_applies_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SqliteStore(path)
    applied = [r[0] for r in store.db.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert applied == sqlite_db.migration_names("coldbatch.store.migrations") and applied[0] == "0001_init.sql"
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"files", "batches", "batch_events", "results", "schema_migrations"} <= tables
    store.close()
    again = SqliteStore(path)  # a restart runs migrate() again: nothing to do
    assert again.migrate() == []
    assert [r[0] for r in again.db.execute("SELECT name FROM schema_migrations ORDER BY name")] == applied


def test_a_fresh_server_file_gets_every_migration_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = resources.files("coldbatch.store.migrations")
    every = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    reports: list[list[str]] = []
    real = SqliteStore.migrate
    monkeypatch.setattr(SqliteStore, "migrate", lambda self: reports.append(real(self)) or reports[-1])
    SqliteStore(tmp_path / "a.sqlite3")
    SqliteStore(tmp_path / "a.sqlite3")
    assert reports == [every, []]


def test_a_failed_server_migration_rolls_back_with_its_bookkeeping(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    names = [r[0] for r in store.db.execute("SELECT name FROM schema_migrations ORDER BY name")]
    store.db.execute("DELETE FROM schema_migrations WHERE name = ?", (names[0],))
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        store.migrate()  # re-running a migration whose tables exist fails loudly ...
    # ... and leaves neither half a schema change nor a bookkeeping row behind
    assert [r[0] for r in store.db.execute("SELECT name FROM schema_migrations ORDER BY name")] == names[1:]
    assert store.db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0


def test_results_logged_before_the_by_line_migration_survive_it(tmp_path: Path) -> None:
    """A server upgraded mid-batch keeps its results log: 0002 rekeys it by line without losing a row."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    init = resources.files("coldbatch.store.migrations").joinpath("0001_init.sql").read_text()
    db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER)")
    for statement in init.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO schema_migrations VALUES ('0001_init.sql', 0)")
    db.executemany(
        "INSERT INTO results VALUES ('batch_x', ?, ?, 1, ?)",
        [(f"id-{n}", n, f'{{"n":{n}}}'.encode()) for n in (3, 1, 2)],
    )
    db.close()
    store = SqliteStore(path)
    assert store.done_lines("batch_x") == {1, 2, 3}
    assert [(cid, line) for cid, line, _, _ in store.iter_results("batch_x")] == [("id-1", 1), ("id-2", 2), ("id-3", 3)]


def test_logging_results_checkpoints_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_BYTES", 10_000)
    store = SqliteStore(tmp_path / "db.sqlite3")
    store.create_batch(
        {
            "id": "batch_1",
            "owner": "local",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": "validating",
            "created_at": 1,
            "expires_at": 86_401,
        }
    )
    assert store.transition("batch_1", S.IN_PROGRESS, 2, total=200)
    done = threading.Event()
    callers: list[str] = []
    real = store.checkpoint

    def checkpoint() -> tuple[int, int, int]:
        callers.append(threading.current_thread().name)
        out = real()
        done.set()
        return out

    monkeypatch.setattr(store, "checkpoint", checkpoint)
    store.record_results("batch_1", [(f"r{i}", i, True, b"x" * 100, 1, 0, 1) for i in range(200)])  # 20 kB
    assert done.wait(10)
    assert callers and all(name == "sqlite-checkpoint" for name in callers)
    busy, frames, copied = real()
    assert busy == 0 and copied == frames
    store.close()  # stops the checkpointer thread too
    assert not any(t.name == "sqlite-checkpoint" and t.is_alive() for t in threading.enumerate())
