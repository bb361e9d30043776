"""The `ServerStore` contract: every implementation (tests/store/conftest.py) keeps these promises.

- `transition` is compare-and-set: an illegal move is refused, and of two concurrent moves out of one
  status exactly one wins; each winning move (and nothing else) writes one event; result files are
  registered only by the move that wins, and a move that fails half-way leaves nothing behind.
- `record_results` counts each input line once (across calls, threads and repeats in one call), counts
  only what it inserted, and writes nothing unless the batch is in_progress or cancelling.
- a batch's log is purged only once the batch is terminal.
- files and batches are per owner; pages, counts and totals are what the rows say.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from coldbatch.core.status import BatchStatus as S
from coldbatch.store.interfaces import ServerStore
from coldbatch.store.records import ResultRow

NOW = 1_700_000_000
PATH = {
    S.VALIDATING: [],
    S.IN_PROGRESS: [S.IN_PROGRESS],
    S.FINALIZING: [S.IN_PROGRESS, S.FINALIZING],
    S.CANCELLING: [S.IN_PROGRESS, S.CANCELLING],
    S.COMPLETED: [S.IN_PROGRESS, S.FINALIZING, S.COMPLETED],
    S.FAILED: [S.FAILED],
}


def _batch(
    store: ServerStore, bid: str = "batch_1", status: S = S.VALIDATING, owner: str = "local", **extra: Any
) -> str:
    store.create_batch(
        {
            "id": bid,
            "owner": owner,
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": S.VALIDATING.value,
            "created_at": NOW,
            "expires_at": NOW + 86_400,
            **extra,
        }
    )
    for to in PATH[status]:
        assert store.transition(bid, to, NOW + 10, **({"total": 10} if to == S.IN_PROGRESS else {}))
    return bid


def _file(fid: str, owner: str = "local", purpose: str = "batch", size: int = 5, **kw: Any) -> dict[str, Any]:
    return {
        "id": fid,
        "owner": owner,
        "filename": f"{fid}.jsonl",
        "purpose": purpose,
        "bytes": size,
        "created_at": NOW,
        "expires_at": None,
        **kw,
    }


def _row(cid: str, line: int, ok: bool = True, tokens: tuple[int, int, int] = (10, 2, 3)) -> ResultRow:
    return (cid, line, ok, b'{"custom_id":"%s"}' % cid.encode(), *(tokens if ok else (0, 0, 0)))


def _get(store: ServerStore, bid: str) -> dict[str, Any]:
    b = store.get_batch(bid, None)
    assert b is not None
    return b


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
        (S.FAILED, S.IN_PROGRESS),
    ],
)
def test_transition_refuses_illegal_moves(server_store: ServerStore, start: S, to: S) -> None:
    bid = _batch(server_store, status=start)
    events = server_store.events(bid)
    assert not server_store.transition(bid, to, NOW + 1, completed=99)
    b = _get(server_store, bid)
    assert b["status"] == start and b["completed"] == 0
    assert server_store.events(bid) == events, "a refused transition must not write an event"


def test_transition_on_an_unknown_batch_is_refused(server_store: ServerStore) -> None:
    assert not server_store.transition("batch_nope", S.IN_PROGRESS, NOW)
    assert server_store.events("batch_nope") == []


def test_events_record_each_winning_transition_once_with_its_time(server_store: ServerStore) -> None:
    bid = _batch(server_store)
    assert server_store.transition(bid, S.IN_PROGRESS, NOW + 1, total=3)
    assert not server_store.transition(bid, S.IN_PROGRESS, NOW + 2)
    assert server_store.transition(bid, S.CANCELLING, NOW + 3)
    assert not server_store.transition(bid, S.FINALIZING, NOW + 4)
    assert server_store.transition(bid, S.CANCELLED, NOW + 5)
    assert server_store.events(bid) == [
        (None, "validating"),
        ("validating", "in_progress"),
        ("in_progress", "cancelling"),
        ("cancelling", "cancelled"),
    ]
    assert [e["at"] for e in server_store.event_log(bid)] == [NOW, NOW + 1, NOW + 3, NOW + 5]
    b = _get(server_store, bid)
    assert (b["in_progress_at"], b["cancelling_at"], b["cancelled_at"], b["total"]) == (NOW + 1, NOW + 3, NOW + 5, 3)


@pytest.mark.parametrize(
    "moves", [(S.CANCELLING, S.FINALIZING), (S.FINALIZING, S.FINALIZING), (S.CANCELLING, S.EXPIRED)]
)
def test_of_two_racing_transitions_exactly_one_wins(
    server_store: ServerStore, reopen_server: Callable[[], ServerStore], moves: tuple[S, S]
) -> None:
    for i in range(10):
        bid = _batch(server_store, f"batch_{i}", S.IN_PROGRESS)
        barrier = threading.Barrier(2)
        won: list[tuple[S, bool]] = []

        def move(to: S, bid: str = bid, barrier: threading.Barrier = barrier, won: list[Any] = won) -> None:
            s = reopen_server()  # its own handle, as a second thread or process has
            barrier.wait()
            won.append((to, s.transition(bid, to, NOW + 1)))
            if s is not server_store:
                s.close()

        threads = [threading.Thread(target=move, args=(to,)) for to in moves]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(ok for _, ok in won) == [False, True], won
        winner = next(to for to, ok in won if ok)
        assert _get(server_store, bid)["status"] == winner
        assert [e for e in server_store.events(bid) if e[0] == S.IN_PROGRESS] == [(S.IN_PROGRESS, winner)]


def test_result_files_are_registered_only_by_the_winning_transition(server_store: ServerStore) -> None:
    bid = _batch(server_store, status=S.FINALIZING)
    assert not server_store.transition(bid, S.CANCELLED, NOW, files=[_file("file-lost", purpose="batch_output")])
    assert server_store.get_file("file-lost", None) is None
    assert server_store.transition(
        bid, S.COMPLETED, NOW, files=[_file("file-won", purpose="batch_output")], output_file_id="file-won"
    )
    f = server_store.get_file("file-won", "local")
    assert f is not None and f["bytes"] == 5 and f["purpose"] == "batch_output"
    assert _get(server_store, bid)["output_file_id"] == "file-won"
    listed, _ = server_store.list_files("local", purpose="batch_output", after=None, limit=9, order="asc")
    assert [f["id"] for f in listed] == ["file-won"], "registered once"


def test_a_transition_that_fails_half_way_leaves_nothing(server_store: ServerStore) -> None:
    bid = _batch(server_store, status=S.FINALIZING)
    with pytest.raises(Exception, match="owner"):  # each backend its own integrity error, naming the field
        server_store.transition(bid, S.COMPLETED, NOW, files=[_file("file-ok"), _file("file-x", owner=None)])
    assert _get(server_store, bid)["status"] == "finalizing"
    assert server_store.get_file("file-ok", None) is None
    assert server_store.events(bid)[-1] == ("in_progress", "finalizing")
    assert server_store.transition(bid, S.COMPLETED, NOW)  # the store is usable again


def test_json_fields_are_stored_as_json_text(server_store: ServerStore) -> None:
    bid = _batch(server_store, metadata={"job": "j1"})
    assert server_store.transition(bid, S.FAILED, NOW, errors={"object": "list", "data": [{"code": "x"}]})
    b = _get(server_store, bid)
    assert b["metadata"] == '{"job":"j1"}' and b["errors"] == '{"object":"list","data":[{"code":"x"}]}'


# -- the results log -----------------------------------------------------------------------------------------
def test_record_results_counts_each_line_once(server_store: ServerStore) -> None:
    bid = _batch(server_store, status=S.IN_PROGRESS)
    assert server_store.record_results(bid, [_row("a", 1), _row("b", 2, ok=False)]) == 2
    rows = [_row("b", 2), _row("c", 3, tokens=(7, 0, 1)), _row("c", 3, tokens=(1000, 0, 1000)), _row("d", 4, False)]
    assert server_store.record_results(bid, rows) == 2
    assert server_store.record_results(bid, [_row("a", 1), _row("c", 3)]) == 0
    assert server_store.record_results(bid, []) == 0
    b = _get(server_store, bid)
    assert (b["completed"], b["failed"]) == (2, 2)
    assert (b["input_tokens"], b["cached_tokens"], b["output_tokens"]) == (17, 2, 4)
    assert server_store.done_lines(bid) == {1, 2, 3, 4}
    logged = list(server_store.iter_results(bid))
    assert [(c, n, ok) for c, n, ok, _ in logged] == [("a", 1, True), ("b", 2, False), ("c", 3, True), ("d", 4, False)]
    assert bytes(logged[1][3]) == b'{"custom_id":"b"}'
    assert [(c, n) for c, n, _, _ in server_store.failed_results(bid, 1)] == [("b", 2)]


@pytest.mark.parametrize("status", [S.VALIDATING, S.FINALIZING, S.COMPLETED])
def test_record_results_writes_nothing_outside_in_progress_and_cancelling(server_store: ServerStore, status: S) -> None:
    bid = _batch(server_store, status=status)
    assert server_store.record_results(bid, [_row("a", 1)]) == 0
    assert server_store.record_results("batch_nope", [_row("a", 1)]) == 0
    b = _get(server_store, bid)
    assert (b["completed"], b["input_tokens"]) == (0, 0) and server_store.done_lines(bid) == set()


def test_in_flight_results_are_still_logged_while_cancelling(server_store: ServerStore) -> None:
    bid = _batch(server_store, status=S.CANCELLING)
    assert server_store.record_results(bid, [_row("a", 1)]) == 1


def test_concurrent_record_results_count_each_row_once(
    server_store: ServerStore, reopen_server: Callable[[], ServerStore]
) -> None:
    bid = _batch(server_store, status=S.IN_PROGRESS)
    rows = [_row(f"r{i}", i) for i in range(400)]

    def log(part: list[ResultRow]) -> None:
        s = reopen_server()
        for i in range(0, len(part), 50):
            s.record_results(bid, part[i : i + 50])
        if s is not server_store:
            s.close()

    threads = [threading.Thread(target=log, args=(rows[k:] + rows[:k],)) for k in (0, 100, 200, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    b = _get(server_store, bid)
    assert (b["completed"], b["input_tokens"]) == (400, 4000)


def test_the_log_is_purged_only_once_its_batch_is_terminal(server_store: ServerStore) -> None:
    bid = _batch(server_store, status=S.IN_PROGRESS)
    server_store.record_results(bid, [_row(f"r{i}", i) for i in range(10)])
    assert server_store.purge_results(bid, chunk=3) == 0
    assert server_store.finished_logs() == []
    assert server_store.transition(bid, S.FINALIZING, NOW) and server_store.transition(bid, S.COMPLETED, NOW)
    assert len(server_store.done_lines(bid)) == 10, "the final transition itself leaves the log alone"
    assert server_store.finished_logs() == [bid]
    assert server_store.purge_results(bid, chunk=3) == 10
    assert server_store.finished_logs() == [] and list(server_store.iter_results(bid)) == []
    assert _get(server_store, bid)["completed"] == 10, "purging the log leaves the counts alone"


# -- files ---------------------------------------------------------------------------------------------------
def test_files_are_per_owner_and_deleted_files_are_gone(server_store: ServerStore) -> None:
    server_store.create_file(_file("file-a", expires_at=NOW + 5))
    server_store.create_file(_file("file-b", owner="other"))
    assert server_store.get_file("file-a", "local") is not None
    assert server_store.get_file("file-a", "other") is None
    assert server_store.get_file("file-a", None) is not None
    assert not server_store.delete_file("file-a", "other")
    assert server_store.expired_files(NOW + 4) == [] and server_store.expired_files(NOW + 5) == ["file-a"]
    assert server_store.delete_file("file-a", "local") and not server_store.delete_file("file-a", "local")
    assert server_store.get_file("file-a", None) is None and server_store.expired_files(NOW + 5) == []
    server_store.forget_file("file-b")
    assert server_store.get_file("file-b", None) is None


def test_file_listing_pages_in_both_orders(server_store: ServerStore) -> None:
    for i in range(5):
        server_store.create_file(_file(f"file-{i}", purpose="batch" if i % 2 == 0 else "fine-tune"))
    server_store.create_file(_file("file-x", owner="other"))
    page, more = server_store.list_files("local", purpose=None, after=None, limit=2, order="desc")
    assert [f["id"] for f in page] == ["file-4", "file-3"] and more
    page, more = server_store.list_files("local", purpose=None, after="file-3", limit=5, order="desc")
    assert [f["id"] for f in page] == ["file-2", "file-1", "file-0"] and not more
    page, more = server_store.list_files("local", purpose="batch", after="file-0", limit=5, order="asc")
    assert [f["id"] for f in page] == ["file-2", "file-4"] and not more
    assert server_store.list_files("local", purpose=None, after="file-nope", limit=5, order="asc") == ([], False)
    assert [f["id"] for f in server_store.file_page(None, offset=1, limit=2)] == ["file-4", "file-3"]
    assert [f["id"] for f in server_store.file_page("other", offset=0, limit=9)] == ["file-x"]


def test_upload_totals_count_uploads_not_result_files(server_store: ServerStore) -> None:
    server_store.create_file(_file("file-a", size=10))
    server_store.create_file(_file("file-b", size=5))
    first, upto = server_store.upload_totals()
    assert first == [("batch", 2, 15)]
    bid = _batch(server_store, status=S.FINALIZING)
    assert server_store.transition(bid, S.COMPLETED, NOW, files=[_file("file-out", purpose="batch_output")])
    server_store.create_file(_file("file-c", purpose="vision", size=7))
    assert server_store.delete_file("file-a", "local")
    later, upto2 = server_store.upload_totals(upto)
    assert later == [("vision", 1, 7)] and upto2 > upto


# -- batches -------------------------------------------------------------------------------------------------
def test_batch_listing_pages_newest_first_per_owner(server_store: ServerStore) -> None:
    for i in range(4):
        _batch(server_store, f"batch_{i}", status=S.COMPLETED if i < 2 else S.IN_PROGRESS)
    _batch(server_store, "batch_x", owner="other")
    page, more = server_store.list_batches("local", after=None, limit=3)
    assert [b["id"] for b in page] == ["batch_3", "batch_2", "batch_1"] and more
    page, more = server_store.list_batches("local", after="batch_1", limit=3)
    assert [b["id"] for b in page] == ["batch_0"] and not more
    assert server_store.list_batches("local", after="batch_x", limit=3) == ([], False)
    assert [b["id"] for b in server_store.unfinished_batches()] == ["batch_2", "batch_3", "batch_x"]
    assert [b["id"] for b in server_store.batch_page(None, offset=1, limit=2)] == ["batch_3", "batch_2"]
    assert [b["id"] for b in server_store.batch_page("local", offset=0, limit=9, status="completed")] == [
        "batch_1",
        "batch_0",
    ]
    assert server_store.batch_status_counts("local") == {"completed": 2, "in_progress": 2}
    assert server_store.batch_status_counts(None) == {"completed": 2, "in_progress": 2, "validating": 1}
    assert server_store.get_batch("batch_x", "local") is None


def test_only_a_terminal_batch_of_the_owner_is_deleted(server_store: ServerStore) -> None:
    running = _batch(server_store, "batch_run", status=S.IN_PROGRESS)
    done = _batch(server_store, "batch_done", status=S.COMPLETED)
    assert not server_store.delete_batch(running, "local") and not server_store.delete_batch(done, "other")
    assert not server_store.delete_batch("batch_nope", "local")
    assert server_store.delete_batch(done, "local") and not server_store.delete_batch(done, "local")
    assert server_store.get_batch(done, None) is None and server_store.events(done) == []
    assert server_store.get_batch(running, "local") is not None


def test_batch_totals_and_the_settled_mark_are_what_the_rows_say(server_store: ServerStore) -> None:
    assert server_store.settled_seq() == 0
    a = _batch(server_store, "batch_a", status=S.IN_PROGRESS, model="m1")
    server_store.record_results(a, [_row("x", 1), _row("y", 2, ok=False)])
    assert server_store.transition(a, S.FINALIZING, NOW + 20) and server_store.transition(a, S.COMPLETED, NOW + 30)
    _batch(server_store, "batch_b", status=S.IN_PROGRESS, model="m1")
    _batch(server_store, "batch_c", status=S.FAILED)
    settled = server_store.settled_seq()
    assert settled == _get(server_store, "batch_a")["seq"]
    rows = {(r["model"], r["status"]): r for r in server_store.batch_totals([10.0, 60.0])}
    assert set(rows) == {("m1", "completed"), ("m1", "in_progress"), ("", "failed")}
    done = rows[("m1", "completed")]
    assert (done["batches"], done["completed"], done["failed"], done["input_tokens"], done["output_tokens"]) == (
        1,
        1,
        1,
        10,
        3,
    )
    assert (done["ended"], done["duration"], done["le0"], done["le1"]) == (1, 30, 0, 1)
    assert (rows[("m1", "in_progress")]["ended"], rows[("m1", "in_progress")]["le1"]) == (0, 0)
    assert [r["status"] for r in server_store.batch_totals([], after=settled)] != []
    assert server_store.batch_totals([], upto=settled)[0]["status"] == "completed"


def test_enqueued_tokens_and_blob_owners(server_store: ServerStore) -> None:
    _batch(server_store, "batch_a", status=S.IN_PROGRESS, model="m", enqueued_tokens=100)
    _batch(server_store, "batch_b", status=S.COMPLETED, model="m", enqueued_tokens=50)
    _batch(server_store, "batch_c", status=S.FINALIZING, model=None, enqueued_tokens=7)
    assert server_store.enqueued_tokens("m") == 100 and server_store.enqueued_tokens(None) == 7
    server_store.create_file(_file("file-live"))
    server_store.create_file(_file("file-in"))
    assert server_store.delete_file("file-in", "local")  # deleted, but unfinished batches still read it
    live, in_use = server_store.blob_owners()
    assert live == {"file-live"} and in_use == {"file-in"}


def test_migrate_again_is_a_no_op(server_store: ServerStore, reopen_server: Callable[[], ServerStore]) -> None:
    assert isinstance(server_store, ServerStore)
    bid = _batch(server_store)
    assert server_store.migrate() == []
    assert _get(server_store, bid)["status"] == "validating"
    again = reopen_server()  # a restart opens (and migrates) the store again: nothing to do, nothing lost
    assert again.migrate() == []
    assert _get(again, bid)["status"] == "validating"
    if again is not server_store:
        again.close()
