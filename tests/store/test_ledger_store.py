"""The `LedgerStore` contract: unit and job states move only along their transition tables, by
compare-and-set with one event per change; results are upserted so a success is never overwritten and
tokens add up over attempts; collecting is all-or-nothing and happens once; planning is idempotent."""

from __future__ import annotations

from typing import Any

import pytest

from coldbatch.core.unit_state import JOB_TRANSITIONS, OPEN_UNIT_STATES, UNIT_TRANSITIONS, JobStatus, UnitState
from coldbatch.store.interfaces import LedgerStore
from coldbatch.store.records import Outcome

U, J = UnitState, JobStatus


def _unit(rnd: int = 1, shard: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "round": rnd,
        "shard": shard,
        "path": f"/s{rnd}-{shard}.jsonl",
        "requests": 2,
        "bytes": 10,
        "sha256": "ab" * 32,
        "model": "m",
        **kw,
    }


@pytest.fixture
def ledger(ledger_store: LedgerStore) -> LedgerStore:
    ledger_store.create_job("j1", "/in.csv", "/out.csv", {"spec": {"model": "m"}, "max_attempts": 3})
    return ledger_store


def _to_created(ledger: LedgerStore, uid: int, batch_id: str = "batch_1") -> None:
    for to, fields in (
        (U.UPLOADING, {"intent_at": 5}),
        (U.UPLOADED, {"file_id": "file-1"}),
        (U.CREATING, {"intent_at": 6}),
        (U.CREATED, {"batch_id": batch_id, "batch_status": "queued"}),
    ):
        assert ledger.move_unit(uid, to, **fields), to


# -- jobs ----------------------------------------------------------------------------------------------------
def test_a_job_round_trips_its_json_fields(ledger: LedgerStore) -> None:
    assert isinstance(ledger, LedgerStore)
    assert ledger.path is None or ledger.path.is_file(), "a ledger on disk says where (error messages name it)"
    job = ledger.job("j1")
    assert job is not None and job.status == "preparing" and job.options["max_attempts"] == 3
    assert ledger.set_job("j1", status="prepared", estimate={"totals": {"batch_cost_usd": 0.5}})
    job = ledger.job("j1")
    assert job is not None and job.status == "prepared" and job.estimate["totals"]["batch_cost_usd"] == 0.5
    assert job.report is None
    assert ledger.job("nope") is None
    assert [j.id for j in ledger.jobs()] == ["j1"]
    assert ledger.job_status("j1") == J.PREPARED and ledger.job_status("nope") is None


def test_records_are_frozen_and_their_json_read_only(ledger: LedgerStore) -> None:
    """What the ledger hands out cannot be changed in place (a change that looked stored and was not)."""
    ledger.add_units("j1", [_unit(1, 1)])
    job, unit = ledger.job("j1"), ledger.units("j1")[0]
    assert job is not None
    with pytest.raises(AttributeError):
        job.status = J.DONE  # type: ignore[misc]
    with pytest.raises(AttributeError):
        unit.batch_id = "b"  # type: ignore[misc]
    with pytest.raises(TypeError, match="read-only"):
        job.options["max_attempts"] = 1  # type: ignore[index]
    assert {**job.options, "max_attempts": 1}["max_attempts"] == 1, "a copy is a plain dict, to store anew"


def test_job_statuses_follow_the_table_and_leave_events(ledger: LedgerStore) -> None:
    assert not ledger.set_job("j1", status="done", report={"rows": 1}), "preparing → done skips the run"
    job = ledger.job("j1")
    assert job is not None and job.status == "preparing" and job.report is None, "refused: nothing written"
    assert ledger.move_job("j1", J.PREPARED) and ledger.move_job("j1", J.RUNNING)
    assert ledger.move_job("j1", J.RUNNING), "a resumed run re-enters running"
    assert ledger.move_job("j1", J.CANCELLING) and not ledger.move_job("j1", J.DONE)
    assert ledger.set_job("j1", status="cancelled", report={"rows": 0})
    assert not ledger.move_job("j1", J.RUNNING) and not ledger.move_job("nope", J.RUNNING)
    assert ledger.job_events("j1") == [
        (None, "preparing"),
        ("preparing", "prepared"),
        ("prepared", "running"),
        ("running", "running"),
        ("running", "cancelling"),
        ("cancelling", "cancelled"),
    ]


def test_set_job_refuses_a_field_the_job_does_not_have(ledger: LedgerStore) -> None:
    with pytest.raises(ValueError, match="no job field"):
        ledger.set_job("j1", statsu="running")


# -- units ---------------------------------------------------------------------------------------------------
def test_units_start_planned_and_move_through_their_states(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit(shard=1), _unit(shard=2, tokens=7)])
    units = ledger.units("j1")
    assert [(u.state, u.try_, u.tokens) for u in units] == [("planned", 1, 0), ("planned", 1, 7)]
    _to_created(ledger, units[0].id)
    u = ledger.units("j1", [U.CREATED])[0]
    assert (u.id, u.intent_at, u.file_id, u.batch_id) == (units[0].id, 6, "file-1", "batch_1")
    ledger.set_batch_status(u.id, "in_progress")
    ledger.mark_cleaned(u.id)
    u = ledger.units("j1", ["created"])[0]
    assert (u.batch_status, u.remote_cleaned, u.state) == ("in_progress", 1, "created")
    open_ids = [x.id for x in ledger.units("j1", OPEN_UNIT_STATES)]  # the runner's "still open" query
    assert open_ids == [units[0].id, units[1].id]
    assert set(OPEN_UNIT_STATES) == {s for s in U if UNIT_TRANSITIONS[s]}
    assert ledger.max_round("j1") == 1 and ledger.max_round("other") == 0
    assert ledger.unit_events(units[0].id) == [
        (None, "planned"),
        ("planned", "uploading"),
        ("uploading", "uploaded"),
        ("uploaded", "creating"),
        ("creating", "created"),
    ]


@pytest.mark.parametrize(
    ("path", "to"),
    [
        ((), U.CREATED),
        ((), U.UPLOADED),
        ((U.UPLOADING,), U.CREATING),
        ((U.UPLOADING,), U.COLLECTED),
        ((U.FAILED,), U.PLANNED),
        ((U.COLLECTED,), U.FAILED),
        ((U.UPLOADING, U.UPLOADED), U.UPLOADING),
    ],
)
def test_a_move_the_table_forbids_is_refused_and_writes_nothing(
    ledger: LedgerStore, path: tuple[U, ...], to: U
) -> None:
    ledger.add_units("j1", [_unit()])
    uid = ledger.units("j1")[0].id
    for step in path:
        assert ledger.move_unit(uid, step)
    before, events = ledger.units("j1")[0], ledger.unit_events(uid)
    assert not ledger.move_unit(uid, to, batch_id="batch_x")
    assert ledger.units("j1")[0].state == before.state and ledger.units("j1")[0].batch_id is None
    assert ledger.unit_events(uid) == events


def test_two_actors_moving_one_unit_cannot_both_win(ledger: LedgerStore) -> None:
    """`coldbatch cancel` fails a planned unit while the runner announces its upload: one of them wins."""
    ledger.add_units("j1", [_unit()])
    uid = ledger.units("j1")[0].id
    assert ledger.move_unit(uid, U.FAILED, detail="cancelled before submission")
    assert not ledger.move_unit(uid, U.UPLOADING, intent_at=1)
    assert ledger.units("j1")[0].detail == "cancelled before submission"


def test_a_requeued_unit_goes_back_to_uploaded_with_its_next_try(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit()])
    uid = ledger.units("j1")[0].id
    _to_created(ledger, uid)
    assert ledger.move_unit(uid, U.UPLOADED, batch_id=None, batch_status=None, **{"try": 2})
    u = ledger.units("j1")[0]
    assert (u.state, u.try_, u.batch_id, u.file_id) == ("uploaded", 2, None, "file-1")


def test_move_unit_refuses_a_column_the_unit_does_not_have(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit()])
    with pytest.raises(ValueError, match="no unit field"):
        ledger.move_unit(ledger.units("j1")[0].id, U.UPLOADING, state="collected")


def test_adding_a_unit_twice_is_a_no_op(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit(2, 1), _unit(2, 2)])
    ledger.add_units("j1", [_unit(2, 1), _unit(2, 2), _unit(2, 3)])
    assert [(u.round, u.shard) for u in ledger.units("j1")] == [(2, 1), (2, 2), (2, 3)]


def test_adding_units_is_all_or_nothing(ledger: LedgerStore) -> None:
    with pytest.raises(KeyError):
        ledger.add_units("j1", [_unit(1, 1), {"round": 1, "shard": 2}])
    assert ledger.units("j1") == []


# -- results -------------------------------------------------------------------------------------------------
def test_collect_upserts_results_and_marks_the_unit_in_one_step(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit(1, 1), _unit(2, 1)])
    u1, u2 = ledger.units("j1")
    _to_created(ledger, u1.id)
    counts = ledger.collect(
        u1,
        [
            Outcome("a", "ok", "yes", prompt_tokens=5, completion_tokens=1, cached_tokens=2),
            Outcome("b", "retry", None, "engine_error", "boom"),
            Outcome("c", "failed", None, "invalid", "bad"),
        ],
        output_file_id="f-o",
    )
    assert counts == {"ok": 1, "retry": 1, "failed": 1}
    unit = ledger.units("j1")[0]
    assert unit.state == "collected" and unit.output_file_id == "f-o"
    assert ledger.retry_ids("j1") == {"b"} and ledger.answered_ids("j1") == {"a", "c"}
    ledger.collect(
        u2,
        [
            Outcome("b", "ok", "now", prompt_tokens=5, completion_tokens=1),
            Outcome("a", "failed", None, "late", "should not win", prompt_tokens=99),
        ],
    )
    res = ledger.results_for("j1", ["a", "b", "c", "missing"])
    assert set(res) == {"a", "b", "c"}
    assert (res["a"]["state"], res["a"]["content"], res["a"]["attempts"], res["a"]["prompt_tokens"]) == (
        "ok",
        "yes",
        1,
        5,
    )
    assert (res["b"]["state"], res["b"]["content"], res["b"]["attempts"], res["b"]["error_code"]) == (
        "ok",
        "now",
        2,
        None,
    )
    assert res["c"]["error_message"] == "bad" and res["a"]["row_id"] == "a"


def test_collecting_a_unit_twice_counts_nothing_twice(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit()])
    u = ledger.units("j1")[0]
    outcomes = [Outcome("a", "retry", None, "engine_error", "x", prompt_tokens=3)]
    assert ledger.collect(u, outcomes) == {"ok": 0, "retry": 1, "failed": 0}
    assert ledger.collect(u, outcomes) == {"ok": 0, "retry": 0, "failed": 0}
    assert ledger.collect(u, outcomes, state=U.FAILED) == {"ok": 0, "retry": 0, "failed": 0}
    assert ledger.results_for("j1", ["a"])["a"]["prompt_tokens"] == 3


def test_collect_can_mark_the_unit_failed(ledger: LedgerStore) -> None:
    """A batch that failed for good: its error lines are collected and the unit ends `failed`, not collected."""
    ledger.add_units("j1", [_unit()])
    u = ledger.units("j1")[0]
    counts = ledger.collect(
        u, [Outcome("a", "failed", None, "invalid_file", "no")], state=U.FAILED, batch_status="failed"
    )
    assert counts == {"ok": 0, "retry": 0, "failed": 1}
    unit = ledger.units("j1")[0]
    assert (unit.state, unit.batch_status) == ("failed", "failed")
    assert ledger.results_for("j1", ["a"])["a"]["error_code"] == "invalid_file"


def test_a_failed_collect_changes_nothing(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit()])
    u = ledger.units("j1")[0]

    def outcomes() -> Any:
        yield Outcome("a", "ok", "x")
        raise RuntimeError("download broke mid-way")

    with pytest.raises(RuntimeError):
        ledger.collect(u, outcomes())
    assert ledger.units("j1")[0].state == "planned" and ledger.results_for("j1", ["a"]) == {}
    assert ledger.unit_events(u.id) == [(None, "planned")]


def test_give_up_and_the_summary(ledger: LedgerStore) -> None:
    ledger.add_units("j1", [_unit(1, 1), _unit(2, 1)])
    u1, u2 = ledger.units("j1")
    ledger.collect(
        u1,
        [
            Outcome("a", "ok", "x", prompt_tokens=10, completion_tokens=2, cached_tokens=4),
            Outcome("b", "retry", None, "engine_error", "boom"),
            Outcome("c", "retry", None, "batch_expired", "late"),
            Outcome("d", "failed", None, "invalid", "bad"),
        ],
    )
    ledger.collect(
        u2,
        [
            Outcome("b", "retry", None, "engine_error", "boom again"),
            Outcome("c", "ok", "y", prompt_tokens=10, completion_tokens=2),
        ],
    )
    assert ledger.summary("j1")["pending_retry"] == 1
    ledger.give_up("j1", ledger.retry_ids("j1"))
    assert ledger.retry_ids("j1") == set()
    assert ledger.results_for("j1", ["b"])["b"]["error_message"] == "boom again", "given up: the last error stays"
    assert ledger.summary("j1") == {
        "results": 4,
        "succeeded": 2,
        "failed": 2,
        "pending_retry": 0,
        "prompt_tokens": 20,
        "completion_tokens": 4,
        "cached_tokens": 4,
        "retried_rows": 2,
        "failed_by_code": {"engine_error": 1, "invalid": 1},
    }
    assert ledger.summary("other")["results"] == 0
    assert sorted(r["custom_id"] for r in ledger.iter_results("j1")) == ["a", "b", "c", "d"]


def test_results_for_more_ids_than_one_query_takes(ledger: LedgerStore) -> None:
    """1,234 ids: more than one statement's worth (the SQLite ledger asks in parts of 500 ids; SQLite once
    bound at most 999 parameters per statement)."""
    ledger.add_units("j1", [_unit()])
    ids = [f"r{i}" for i in range(1234)]
    ledger.collect(ledger.units("j1")[0], [Outcome(i, "ok", i) for i in ids])
    got = ledger.results_for("j1", [*ids, "missing"])
    assert len(got) == 1234 and got["r1000"]["content"] == "r1000"
    assert sum(1 for _ in ledger.iter_results("j1")) == 1234


def test_sync_results_cached_answers_and_question_keys(ledger: LedgerStore) -> None:
    ledger.add_row_keys("j1", [("row-1", "k-a"), ("row-2", "k-a"), ("row-3", "k-b"), ("row-4", "k-c")])
    ledger.add_row_keys("j1", [("row-1", "k-zzz")])  # idempotent: the first key stays
    assert ledger.keyed("j1") and not ledger.keyed("other")
    assert ledger.rows_per_key("j1") == {"k-a": 2, "k-b": 1, "k-c": 1}
    ledger.record_cached("j1", [Outcome("k-a", "ok", "cached answer")])
    ledger.record_results("j1", [Outcome("k-b", "retry", None, "timeout", "slow", prompt_tokens=4)])
    ledger.record_results(
        "j1",
        [Outcome("k-b", "ok", "b", prompt_tokens=4, completion_tokens=1), Outcome("k-a", "failed", None, "x", "y")],
        attempts=2,
    )
    ledger.record_cached("j1", [Outcome("k-b", "failed", None, "cache_miss", "no")])  # never over a result
    got = ledger.results_for("j1", ["row-1", "row-2", "row-3", "row-4"], keyed=True)
    assert {k: (v["state"], v["content"], v["attempts"]) for k, v in got.items()} == {
        "row-1": ("ok", "cached answer", 0),
        "row-2": ("ok", "cached answer", 0),
        "row-3": ("ok", "b", 2),
    }
    assert got["row-3"]["prompt_tokens"] == 8 and got["row-3"]["row_id"] == "row-3"
    assert ledger.row_counts("j1") == {"ok": 3}


def test_rescued_requests_are_summed(ledger: LedgerStore) -> None:
    assert ledger.rescued_summary("j1") == {
        "requests": 0,
        "succeeded": 0,
        "rows": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    ledger.add_row_keys("j1", [("row-1", "k-a"), ("row-2", "k-a"), ("row-3", "k-b")])
    ledger.record_results(
        "j1",
        [
            Outcome("k-a", "ok", "a", prompt_tokens=5, completion_tokens=1),
            Outcome("k-b", "failed", None, "x", "y", prompt_tokens=3),
        ],
    )
    ledger.add_rescued("j1", ["k-a", "k-b"])
    ledger.add_rescued("j1", ["k-a"])
    assert ledger.rescued_summary("j1") == {
        "requests": 2,
        "succeeded": 1,
        "rows": 3,
        "prompt_tokens": 8,
        "completion_tokens": 1,
    }


def test_every_state_in_the_tables_is_reachable_from_the_first() -> None:
    for table, first in ((UNIT_TRANSITIONS, U.PLANNED), (JOB_TRANSITIONS, J.PREPARING)):
        seen, todo = {first}, [first]
        while todo:
            for nxt in table[todo.pop()]:  # type: ignore[index]
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen == set(table)
