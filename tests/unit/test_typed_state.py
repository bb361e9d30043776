"""Typed client state (issue 11, point 3): the ledger hands out frozen records, and a job written by the code
before them still reads, resumes and reports the same.

`old_ledger/` holds a ledger and job folders as the previous code wrote them (`old_ledger/make.py` says how):
`old-done` ran to its end, `old-prepared` was prepared and routed by `--mode auto`, nothing sent."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from _fake_provider import FakeProvider

from coldbatch.errors import InputError
from coldbatch.protocol.limits import Limits
from coldbatch.runner import ledger as LG
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.options import RunOptions
from coldbatch.runner.orchestrator import Runner
from coldbatch.runner.report import JobReport

OLD = Path(__file__).parent / "old_ledger"
OLD_ROOT = "/tmp/oldfix"  # where make.py built it: the ledger's paths start here
#: what the old code's report said about old-done (12 rows, 8 distinct questions, one round)
TOTALS = ("rows", "succeeded", "failed", "prompt_tokens", "completion_tokens", "cost_batch_usd", "requests_sent")


def _label(cid: str, body: dict[str, Any], n: int) -> Any:
    return ("ok", '{"label": "yes"}')  # the answer make.py's provider gave


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of the old job home, its paths moved to tmp_path (the ledger stores absolute paths)."""
    shutil.copytree(OLD, tmp_path, dirs_exist_ok=True)
    db = sqlite3.connect(tmp_path / "home" / "ledger.sqlite3")
    with db:
        for table, cols in (("jobs", ("input_path", "output_path")), ("units", ("path",))):
            for col in cols:
                db.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (OLD_ROOT, str(tmp_path)))
    db.close()
    return tmp_path


def _run(ledger: LG.Ledger, job_id: str, home: Path, provider: FakeProvider) -> JobReport:
    runner = Runner(ledger, provider, job_id, home, sleep=_no_sleep)
    runner.prepare()
    return asyncio.run(runner.run())


def test_an_old_jobs_options_estimate_and_report_read_into_the_new_types(old: Path) -> None:
    ledger = LG.Ledger(old / "home" / "ledger.sqlite3")
    try:
        done, prepared = ledger.job("old-done"), ledger.job("old-prepared")
        assert done is not None and prepared is not None
        assert (done.status, prepared.status) == (LG.JobStatus.DONE, LG.JobStatus.PREPARED)
        opts = RunOptions.from_json(prepared.options, prepared.id)
        assert opts.limits == Limits(max_requests=5) and opts.max_cost == 5.0 and opts.mode == "batch"
        assert opts.request_spec().labels == ("yes", "no") and opts.to_json() == dict(prepared.options)
        est = JobEstimate.of(prepared.estimate)
        assert (est.requests, est.distinct_requests, est.requests_to_send) == (12, 8, 8)
        assert est.route is not None and est.route["mode"] == "batch" and "--sync-threshold 5" in est.route["reason"]
        report = JobReport.of(done.report or {})
        assert (report.rows, report.succeeded, report.failed, report.exit_status) == (12, 12, 0, 0)
        assert [(u.state, u.requests, u.try_) for u in ledger.units("old-done")] == [
            ("collected", 5, 1),
            ("collected", 3, 1),
        ]
    finally:
        ledger.close()


def test_an_old_finished_job_resumes_to_the_same_totals_and_output_without_sending(old: Path) -> None:
    ledger = LG.Ledger(old / "home" / "ledger.sqlite3")
    try:
        before = ledger.job("old-done")
        assert before is not None and before.report is not None
        provider = FakeProvider(_label)
        report = _run(ledger, "old-done", old / "home", provider)
        assert provider.calls == {}, "a finished job sends nothing when it is resumed"
        assert {k: report.details[k] for k in TOTALS} == {k: before.report[k] for k in TOTALS}
        assert (old / "done.csv").read_bytes() == (OLD / "done.csv").read_bytes(), "OUTPUT rewritten identically"
    finally:
        ledger.close()


def test_an_old_prepared_job_runs_to_what_the_old_code_reported(old: Path) -> None:
    """Prepared and routed by the old code, sent and reported by the new: the same figures as the old code's
    own run of the same input, and the stored routing decision in the report."""
    ledger = LG.Ledger(old / "home" / "ledger.sqlite3")
    try:
        old_report = ledger.job("old-done").report  # type: ignore[union-attr]
        assert old_report is not None
        report = _run(ledger, "old-prepared", old / "home", FakeProvider(_label))
        assert {k: report.details[k] for k in TOTALS} == {k: old_report[k] for k in TOTALS}
        assert report.details["route"]["mode"] == "batch" and report.mode == "batch"
        assert (old / "prepared.csv").read_bytes() == (OLD / "done.csv").read_bytes()
        assert ledger.job("old-prepared").status == LG.JobStatus.DONE  # type: ignore[union-attr]
    finally:
        ledger.close()


def test_records_and_options_cannot_be_changed_in_place(old: Path) -> None:
    """A change that looked stored but was not is impossible: only the ledger's writes change a job."""
    ledger = LG.Ledger(old / "home" / "ledger.sqlite3")
    try:
        job, unit = ledger.job("old-done"), ledger.units("old-done")[0]
        assert job is not None
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.status = LG.JobStatus.RUNNING  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            unit.state = LG.UnitState.PLANNED  # type: ignore[misc]
        with pytest.raises(TypeError, match="read-only"):
            job.options["max_attempts"] = 9  # type: ignore[index]
        with pytest.raises(TypeError, match="read-only"):
            job.options["spec"]["model"] = "gpt-4o"  # type: ignore[index]
        opts = RunOptions.from_json(job.options, job.id)
        with pytest.raises(dataclasses.FrozenInstanceError):
            opts.max_cost = 100.0  # type: ignore[misc]
        assert dataclasses.replace(opts, max_cost=100.0).max_cost == 100.0 and opts.max_cost == 5.0
        assert dataclasses.replace(unit, state=LG.UnitState.FAILED).state == "failed"
        assert ledger.units("old-done")[0].state == "collected", "a changed copy changes nothing stored"
    finally:
        ledger.close()


def test_an_unknown_state_in_the_ledger_is_refused_naming_the_job_and_unit(old: Path) -> None:
    """A ledger written by a newer coldbatch (a state this one does not know) is not guessed at."""
    path = old / "home" / "ledger.sqlite3"
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE units SET state = 'archived' WHERE id = 2")
        db.execute("UPDATE jobs SET status = 'paused' WHERE id = 'old-prepared'")
    db.close()
    ledger = LG.Ledger(path)
    try:
        with pytest.raises(InputError, match=r"job old-done, unit 2: unknown unit state 'archived'.*newer coldbatch"):
            ledger.units("old-done")
        with pytest.raises(InputError, match=r"job old-prepared: unknown job status 'paused'"):
            ledger.job("old-prepared")
    finally:
        ledger.close()


def test_stored_options_with_a_field_this_version_does_not_know_are_refused() -> None:
    stored = RunOptions(spec={"model": "m", "prompt": "{x}"}).to_json()
    assert RunOptions.from_json(stored) == RunOptions(spec={"model": "m", "prompt": "{x}"})
    with pytest.raises(InputError, match=r"job j1: its stored options have field.* turbo"):
        RunOptions.from_json({**stored, "turbo": True}, "j1")
