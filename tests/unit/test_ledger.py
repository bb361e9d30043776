"""The job ledger: jobs, units and their states, per-row results (upsert rules), retries and the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coldbatch.runner import ledger as LG
from coldbatch.runner.ledger import Ledger, Outcome


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    lg = Ledger(tmp_path / "state" / "ledger.sqlite3")
    lg.create_job("j1", "/in.csv", "/out.csv", {"spec": {"model": "m"}, "max_attempts": 3})
    return lg


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


def test_a_job_round_trips_its_json_fields(ledger: Ledger) -> None:
    job = ledger.job("j1")
    assert job is not None and job["status"] == "preparing" and job["options"]["max_attempts"] == 3
    ledger.set_job("j1", status="prepared", estimate={"totals": {"batch_cost_usd": 0.5}})
    job = ledger.job("j1")
    assert job is not None and job["status"] == "prepared" and job["estimate"]["totals"]["batch_cost_usd"] == 0.5
    assert ledger.job("nope") is None
    assert [j["id"] for j in ledger.jobs()] == ["j1"]


def test_units_start_planned_and_move_through_their_states(ledger: Ledger) -> None:
    ledger.add_units("j1", [_unit(shard=1), _unit(shard=2, tokens=7)])
    units = ledger.units("j1")
    assert [(u["state"], u["try"], u["tokens"]) for u in units] == [("planned", 1, 0), ("planned", 1, 7)]
    for state in (LG.UPLOADING, LG.UPLOADED, LG.CREATING, LG.CREATED):
        assert ledger.move_unit(units[0]["id"], state)
        assert ledger.units("j1", [state])[0]["id"] == units[0]["id"]
    assert [u["id"] for u in ledger.units("j1", LG.OPEN_STATES)] == [units[0]["id"], units[1]["id"]]
    assert ledger.max_round("j1") == 1 and ledger.max_round("other") == 0


def test_adding_a_unit_twice_is_a_no_op(ledger: Ledger) -> None:
    """A crash between writing a retry file and recording its unit must not plan the round twice."""
    ledger.add_units("j1", [_unit(2, 1), _unit(2, 2)])
    ledger.add_units("j1", [_unit(2, 1), _unit(2, 2), _unit(2, 3)])
    assert [(u["round"], u["shard"]) for u in ledger.units("j1")] == [(2, 1), (2, 2), (2, 3)]


def test_adding_units_is_all_or_nothing(ledger: Ledger) -> None:
    with pytest.raises(KeyError):
        ledger.add_units("j1", [_unit(1, 1), {"round": 1, "shard": 2}])
    assert ledger.units("j1") == []


def test_collect_upserts_results_and_marks_the_unit_in_one_step(ledger: Ledger) -> None:
    ledger.add_units("j1", [_unit(1, 1), _unit(2, 1)])
    u1, u2 = ledger.units("j1")
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
    assert unit["state"] == LG.COLLECTED and unit["output_file_id"] == "f-o"
    assert ledger.retry_ids("j1") == {"b"}
    # the next round: b succeeds, a success is never overwritten, tokens add up over the attempts
    ledger.collect(
        u2,
        [
            Outcome("b", "ok", "now", prompt_tokens=5, completion_tokens=1),
            Outcome("a", "failed", None, "late", "should not win", prompt_tokens=99),
        ],
    )
    res = ledger.results_for("j1", ["a", "b", "c"])
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
    assert res["c"]["error_message"] == "bad"


def test_collecting_a_unit_twice_counts_nothing_twice(ledger: Ledger) -> None:
    ledger.add_units("j1", [_unit()])
    u = ledger.units("j1")[0]
    outcomes = [Outcome("a", "retry", None, "engine_error", "x", prompt_tokens=3)]
    assert ledger.collect(u, outcomes) == {"ok": 0, "retry": 1, "failed": 0}
    assert ledger.collect(u, outcomes) == {"ok": 0, "retry": 0, "failed": 0}
    assert ledger.results_for("j1", ["a"])["a"]["prompt_tokens"] == 3


def test_collect_can_mark_the_unit_failed(ledger: Ledger) -> None:
    ledger.add_units("j1", [_unit()])
    u = ledger.units("j1")[0]
    ledger.collect(u, [Outcome("a", "failed", None, "invalid_file", "no")], state=LG.FAILED, batch_status="failed")
    assert (ledger.units("j1")[0]["state"], ledger.units("j1")[0]["batch_status"]) == ("failed", "failed")


def test_a_failed_collect_changes_nothing(ledger: Ledger) -> None:
    ledger.add_units("j1", [_unit()])
    u = ledger.units("j1")[0]

    def outcomes() -> Any:
        yield Outcome("a", "ok", "x")
        raise RuntimeError("download broke mid-way")

    with pytest.raises(RuntimeError):
        ledger.collect(u, outcomes())
    assert ledger.units("j1")[0]["state"] == LG.PLANNED and ledger.results_for("j1", ["a"]) == {}


def test_give_up_turns_pending_retries_into_failures_and_the_summary_counts_them(ledger: Ledger) -> None:
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
    assert ledger.results_for("j1", ["b"])["b"]["error_message"] == "boom again"


def test_results_for_many_ids_and_an_empty_summary(ledger: Ledger) -> None:
    ledger.add_units("j1", [_unit()])
    ids = [f"r{i}" for i in range(1234)]
    ledger.collect(ledger.units("j1")[0], [Outcome(i, "ok", i) for i in ids])
    got = ledger.results_for("j1", [*ids, "missing"])
    assert len(got) == 1234 and got["r1000"]["content"] == "r1000"
    assert sum(1 for _ in ledger.iter_results("j1")) == 1234
    assert ledger.summary("other")["results"] == 0


def test_the_ledger_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    a = Ledger(path)
    a.create_job("j", "/i", "/o", {})
    a.add_units("j", [_unit()])
    a.close()
    b = Ledger(path)
    assert b.job("j") is not None and len(b.units("j")) == 1
    b.close()
