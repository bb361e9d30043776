"""SQLite-level invariants of the server store (real files, real connections, real threads).

- `transition` is compare-and-set: an illegal move is refused, and of two concurrent moves out of one
  status exactly one wins; each winning move (and nothing else) writes one event row; result files
  are registered only by the move that wins.
- `record_results` ignores `custom_id`s already logged (or repeated in one call), counts only the
  rows it inserted (request counts and token usage alike), and writes nothing unless the batch is
  `in_progress` or `cancelling`.
- the log of a batch is purged only once the batch is terminal.
- migrations apply once; applying again is a no-op.
- blob writes are all-or-nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from coldbatch.core.status import BatchStatus as S
from coldbatch.store import sqlite as sqlite_store
from coldbatch.store.blobs import LocalBlobStore
from coldbatch.store.sqlite import ResultRow, SqliteStore

NOW = 1_700_000_000


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "db.sqlite3")


def _batch(store: SqliteStore, bid: str = "batch_1", status: S = S.VALIDATING) -> str:
    store.create_batch(
        {
            "id": bid,
            "owner": "local",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": S.VALIDATING.value,
            "created_at": NOW,
            "expires_at": NOW + 86_400,
        }
    )
    path = {
        S.VALIDATING: [],
        S.IN_PROGRESS: [S.IN_PROGRESS],
        S.FINALIZING: [S.IN_PROGRESS, S.FINALIZING],
        S.CANCELLING: [S.IN_PROGRESS, S.CANCELLING],
        S.COMPLETED: [S.IN_PROGRESS, S.FINALIZING, S.COMPLETED],
    }
    for to in path[status]:
        assert store.transition(bid, to, NOW, **({"total": 10} if to == S.IN_PROGRESS else {}))
    return bid


def _row(cid: str, line: int, ok: bool = True, tokens: tuple[int, int, int] = (10, 2, 3)) -> ResultRow:
    return (cid, line, ok, b'{"custom_id":"%s"}' % cid.encode(), *(tokens if ok else (0, 0, 0)))


def _status(store: SqliteStore, bid: str) -> str:
    b = store.get_batch(bid, None)
    assert b is not None
    return str(b["status"])


# -- transitions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "to"),
    [
        (S.VALIDATING, S.COMPLETED),
        (S.VALIDATING, S.FINALIZING),
        (S.IN_PROGRESS, S.VALIDATING),
        (S.IN_PROGRESS, S.CANCELLED),
        (S.FINALIZING, S.CANCELLING),
        (S.FINALIZING, S.IN_PROGRESS),
        (S.CANCELLING, S.COMPLETED),
        (S.COMPLETED, S.CANCELLING),
        (S.COMPLETED, S.FAILED),
        (S.COMPLETED, S.COMPLETED),
    ],
)
def test_transition_refuses_illegal_moves(store: SqliteStore, start: S, to: S) -> None:
    bid = _batch(store, status=start)
    events = store.events(bid)
    assert not store.transition(bid, to, NOW + 1, completed=99)
    b = store.get_batch(bid, None)
    assert b is not None and b["status"] == start and b["completed"] == 0
    assert store.events(bid) == events, "a refused transition must not write an event"


def test_transition_on_unknown_batch_is_refused(store: SqliteStore) -> None:
    assert not store.transition("batch_nope", S.IN_PROGRESS, NOW)
    assert store.events("batch_nope") == []


@pytest.mark.parametrize(
    "moves", [(S.CANCELLING, S.FINALIZING), (S.FINALIZING, S.FINALIZING), (S.CANCELLING, S.EXPIRED)]
)
def test_concurrent_transitions_exactly_one_wins(tmp_path: Path, moves: tuple[S, S]) -> None:
    path = tmp_path / "db.sqlite3"
    setup = SqliteStore(path)
    for i in range(20):
        bid = _batch(setup, f"batch_{i}", S.IN_PROGRESS)
        barrier = threading.Barrier(2)
        won: list[tuple[S, bool]] = []

        def move(to: S, bid: str = bid, barrier: threading.Barrier = barrier, won: list[Any] = won) -> None:
            s = SqliteStore(path)  # its own connection, as a second thread/process would have
            barrier.wait()
            won.append((to, s.transition(bid, to, NOW + 1)))
            s.close()

        threads = [threading.Thread(target=move, args=(to,)) for to in moves]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(ok for _, ok in won) == [False, True], won
        winner = next(to for to, ok in won if ok)
        assert _status(setup, bid) == winner
        assert [e for e in setup.events(bid) if e[0] == S.IN_PROGRESS] == [(S.IN_PROGRESS, winner)]


def test_events_record_each_transition_once(store: SqliteStore) -> None:
    bid = _batch(store)
    assert store.transition(bid, S.IN_PROGRESS, NOW + 1, total=3)
    assert not store.transition(bid, S.IN_PROGRESS, NOW + 2)
    assert store.transition(bid, S.CANCELLING, NOW + 3)
    assert not store.transition(bid, S.FINALIZING, NOW + 4)
    assert store.transition(bid, S.CANCELLED, NOW + 5)
    assert store.events(bid) == [
        (None, "validating"),
        ("validating", "in_progress"),
        ("in_progress", "cancelling"),
        ("cancelling", "cancelled"),
    ]
    ats = [r[0] for r in store.db.execute("SELECT at FROM batch_events WHERE batch_id = ? ORDER BY rowid", (bid,))]
    assert ats == [NOW, NOW + 1, NOW + 3, NOW + 5]
    b = store.get_batch(bid, None)
    assert b is not None
    assert (b["in_progress_at"], b["cancelling_at"], b["cancelled_at"]) == (NOW + 1, NOW + 3, NOW + 5)


def _result_file(fid: str) -> dict[str, Any]:
    return {
        "id": fid,
        "owner": "local",
        "filename": "out.jsonl",
        "purpose": "batch_output",
        "bytes": 5,
        "created_at": NOW,
        "expires_at": None,
    }


def test_result_files_are_registered_only_by_the_winning_transition(store: SqliteStore) -> None:
    bid = _batch(store, status=S.FINALIZING)
    assert not store.transition(bid, S.CANCELLED, NOW, files=[_result_file("file-lost")])
    assert store.get_file("file-lost", None) is None
    assert store.transition(bid, S.COMPLETED, NOW, files=[_result_file("file-won")], output_file_id="file-won")
    f = store.get_file("file-won", "local")
    assert f is not None and f["bytes"] == 5
    assert store.db.execute("SELECT COUNT(*) FROM files WHERE id = 'file-won'").fetchone()[0] == 1


def test_a_failing_transition_rolls_back_entirely(store: SqliteStore) -> None:
    bid = _batch(store, status=S.FINALIZING)
    bad = {**_result_file("file-x"), "owner": None}  # NOT NULL violated inside the transaction
    with pytest.raises(sqlite3.IntegrityError):
        store.transition(bid, S.COMPLETED, NOW, files=[bad])
    assert _status(store, bid) == "finalizing"
    assert store.events(bid)[-1] == ("in_progress", "finalizing")
    assert store.transition(bid, S.COMPLETED, NOW)  # the connection is usable again


# -- the results log -----------------------------------------------------------------------------------------
def test_record_results_ignores_duplicates_and_counts_only_inserted_rows(store: SqliteStore) -> None:
    bid = _batch(store, status=S.IN_PROGRESS)
    assert store.record_results(bid, [_row("a", 1), _row("b", 2, ok=False)]) == 2
    # b again (now ok: must still be ignored), c new, c repeated in the same call (first wins), d failed
    rows = [_row("b", 2), _row("c", 3, tokens=(7, 0, 1)), _row("c", 3, tokens=(1000, 0, 1000)), _row("d", 4, False)]
    assert store.record_results(bid, rows) == 2
    assert store.record_results(bid, [_row("a", 1), _row("c", 3)]) == 0
    assert store.record_results(bid, []) == 0
    b = store.get_batch(bid, None)
    assert b is not None
    assert (b["completed"], b["failed"]) == (2, 2)
    assert (b["input_tokens"], b["cached_tokens"], b["output_tokens"]) == (17, 2, 4)
    assert store.done_lines(bid) == {1, 2, 3, 4}
    logged = list(store.iter_results(bid))
    assert [(cid, line, ok) for cid, line, ok, _ in logged] == [
        ("a", 1, True),
        ("b", 2, False),
        ("c", 3, True),
        ("d", 4, False),
    ]
    assert logged[1][3] == b'{"custom_id":"b"}'


@pytest.mark.parametrize("status", [S.VALIDATING, S.FINALIZING, S.COMPLETED])
def test_record_results_writes_nothing_outside_in_progress_and_cancelling(store: SqliteStore, status: S) -> None:
    bid = _batch(store, status=status)
    assert store.record_results(bid, [_row("a", 1)]) == 0
    b = store.get_batch(bid, None)
    assert b is not None and (b["completed"], b["input_tokens"]) == (0, 0)
    assert store.done_lines(bid) == set()


def test_in_flight_results_are_still_logged_while_cancelling(store: SqliteStore) -> None:
    bid = _batch(store, status=S.CANCELLING)
    assert store.record_results(bid, [_row("a", 1)]) == 1


def test_concurrent_record_results_count_each_row_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    bid = _batch(SqliteStore(path), status=S.IN_PROGRESS)
    rows = [_row(f"r{i}", i) for i in range(500)]

    def log(part: list[ResultRow]) -> None:
        s = SqliteStore(path)
        for i in range(0, len(part), 50):
            s.record_results(bid, part[i : i + 50])
        s.close()

    threads = [threading.Thread(target=log, args=(rows[k:] + rows[:k],)) for k in (0, 125, 250, 375)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    b = SqliteStore(path).get_batch(bid, None)
    assert b is not None and (b["completed"], b["input_tokens"]) == (500, 5000)


def test_purge_results_only_once_terminal(store: SqliteStore) -> None:
    bid = _batch(store, status=S.IN_PROGRESS)
    store.record_results(bid, [_row(f"r{i}", i) for i in range(10)])
    assert store.purge_results(bid, chunk=3) == 0
    assert store.finished_logs() == []
    assert store.transition(bid, S.FINALIZING, NOW) and store.transition(bid, S.COMPLETED, NOW)
    assert len(store.done_lines(bid)) == 10, "the final transition itself leaves the log alone"
    assert store.finished_logs() == [bid]
    assert store.purge_results(bid, chunk=3) == 10
    assert store.finished_logs() == []
    assert store.db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    b = store.get_batch(bid, None)
    assert b is not None and b["completed"] == 10, "purging the log leaves the counts alone"


def test_logging_results_checkpoints_in_the_background(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_BYTES", 10_000)
    bid = _batch(store, status=S.IN_PROGRESS)
    done = threading.Event()
    callers: list[str] = []
    real = store.checkpoint

    def checkpoint() -> tuple[int, int, int]:
        callers.append(threading.current_thread().name)
        out = real()
        done.set()
        return out

    monkeypatch.setattr(store, "checkpoint", checkpoint)
    store.record_results(bid, [(f"r{i}", i, True, b"x" * 100, 1, 0, 1) for i in range(200)])  # 20 kB
    assert done.wait(10)
    assert callers and all(name == "sqlite-checkpoint" for name in callers)
    busy, frames, copied = real()
    assert busy == 0 and copied == frames
    store.close()  # stops the checkpointer thread too
    assert not any(t.name == "sqlite-checkpoint" and t.is_alive() for t in threading.enumerate())


# -- migrations ----------------------------------------------------------------------------------------------
def test_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SqliteStore(path)
    applied = [r[0] for r in store.db.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert applied and applied[0] == "0001_init.sql"
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"files", "batches", "batch_events", "results", "schema_migrations"} <= tables
    bid = _batch(store)
    assert store.migrate() == []
    store.close()
    again = SqliteStore(path)  # a restart runs migrate() again: nothing to do, nothing lost
    assert again.migrate() == []
    assert [r[0] for r in again.db.execute("SELECT name FROM schema_migrations ORDER BY name")] == applied
    assert _status(again, bid) == "validating"


def test_a_fresh_file_gets_every_migration_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = resources.files("coldbatch.store.migrations")
    every = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    reports: list[list[str]] = []
    real = SqliteStore.migrate
    monkeypatch.setattr(SqliteStore, "migrate", lambda self: reports.append(real(self)) or reports[-1])
    SqliteStore(tmp_path / "a.sqlite3")
    SqliteStore(tmp_path / "a.sqlite3")
    assert reports == [every, []]


def test_a_failed_migration_rolls_back_with_its_bookkeeping(store: SqliteStore) -> None:
    names = [r[0] for r in store.db.execute("SELECT name FROM schema_migrations ORDER BY name")]
    store.db.execute("DELETE FROM schema_migrations WHERE name = ?", (names[0],))
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        store.migrate()  # re-running a migration whose tables exist fails loudly ...
    # ... and leaves neither half a schema change nor a bookkeeping row behind
    assert [r[0] for r in store.db.execute("SELECT name FROM schema_migrations ORDER BY name")] == names[1:]
    assert store.db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0


# -- blobs ---------------------------------------------------------------------------------------------------
def test_blob_writes_are_all_or_nothing(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "files")
    with blobs.writer("file-a") as fh:
        fh.write(b"hello\n")
    assert blobs.path("file-a").read_bytes() == b"hello\n"
    with pytest.raises(RuntimeError), blobs.writer("file-a") as fh:
        fh.write(b"half a replacement")
        raise RuntimeError("crash")
    assert blobs.path("file-a").read_bytes() == b"hello\n"
    assert not list((tmp_path / "files" / "tmp").iterdir())
    assert blobs.stored_keys() == ["file-a"]


def test_clear_tmp_removes_interrupted_writes(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "files")
    (tmp_path / "files" / "tmp" / "file-b.123.0.part").write_bytes(b"partial")
    blobs.clear_tmp()
    assert not list((tmp_path / "files" / "tmp").iterdir())
    assert not blobs.exists("file-b")
    with pytest.raises(ValueError):
        blobs.path("../etc/passwd")


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
