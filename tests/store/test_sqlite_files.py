"""SQLite files made by earlier versions still open: a ledger or cache written before they had migrations
(with or without the confidence column) is adopted as it is, its rows read back, and it takes new writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coldbatch.core.unit_state import UnitState
from coldbatch.store import sqlite_db
from coldbatch.store.cache import ResultCache, _checksum
from coldbatch.store.ledger import Ledger
from coldbatch.store.records import Entry, Outcome

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
    assert job is not None and job["status"] == "running" and job["options"] == {"mode": "batch"}
    assert ledger.results_for("j", ["a"])["a"]["content"] == "yes"
    unit = ledger.units("j", [UnitState.CREATED])[0]
    assert ledger.collect(unit, [Outcome("b", "ok", "no", confidence=0.75)]) == {"ok": 1, "retry": 0, "failed": 0}
    assert ledger.results_for("j", ["b"])["b"]["confidence"] == 0.75
    assert ledger.unit_events(unit["id"]) == [("created", "collected")]
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
