"""The runner (`Runner`) against a scripted in-memory Batch API: retries by error class, crash windows,
reconciliation, housekeeping, cancel. Each "crash" is an exception from a provider hook; the resume is a
new `Runner` on the same ledger (a new process: it has written no intents of its own)."""

from __future__ import annotations

import asyncio
import csv
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from _fake_provider import Crash, FakeProvider

from coldbatch.builder.spec import RequestSpec
from coldbatch.errors import BudgetExceeded
from coldbatch.job import JobLock as _JobLock
from coldbatch.protocol.limits import Limits
from coldbatch.runner import collect as C
from coldbatch.runner import ledger as LG
from coldbatch.runner.context import RunContext
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.options import RunOptions
from coldbatch.runner.orchestrator import Runner
from coldbatch.runner.prepare import check_budget


async def _no_sleep(_: float) -> None:
    return None


def _sleep_limit(n: int) -> Any:
    """A sleep that fails the test instead of looping forever."""
    calls = [0]

    async def sleep(_: float) -> None:
        calls[0] += 1
        if calls[0] > n:
            raise AssertionError("the runner kept waiting: it would never finish")

    return sleep


class Job:
    def __init__(
        self,
        tmp: Path,
        rows: int = 25,
        *,
        max_requests: int = 10,
        texts: list[str] | None = None,
        max_line_bytes: int = Limits().max_line_bytes,
        **opts: Any,
    ) -> None:
        self.root = tmp / "home"
        self.input = tmp / "in.csv"
        self.out = tmp / "out.csv"
        with self.input.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text"])
            for i in range(1, rows + 1):
                w.writerow([f"k{i}", texts[i - 1] if texts else f"text {i}"])
        self.ledger = LG.Ledger(self.root / "ledger.sqlite3")
        spec = RequestSpec(model="gpt-4o-mini", prompt="Say {text}", id_column="id")
        opts.setdefault("dedup", False)  # these tests exercise the unit mechanics with row-level custom_ids
        ro = RunOptions(
            spec=spec.describe(),
            limits=Limits(max_requests=max_requests, max_line_bytes=max_line_bytes),
            poll_interval=0.0,
            **opts,
        )
        self.id = "job-test"
        self.ledger.create_job(self.id, str(self.input), str(self.out), asdict(ro))

    def runner(self, provider: FakeProvider, sleep: Any = _no_sleep) -> Runner:
        return Runner(self.ledger, provider, self.id, self.root, sleep=sleep)

    def run(self, provider: FakeProvider, sleep: Any = _no_sleep) -> dict[str, Any]:
        r = self.runner(provider, sleep)
        r.prepare()
        return asyncio.run(r.run()).to_json()  # the report as stored and printed

    def units(self) -> list[dict[str, Any]]:
        return self.ledger.units(self.id)

    def results(self) -> dict[str, dict[str, Any]]:
        return {r["custom_id"]: r for r in self.ledger.iter_results(self.id)}

    def output(self) -> list[dict[str, str]]:
        with self.out.open(newline="") as fh:
            return list(csv.DictReader(fh))


def _one_batch_per_try(p: FakeProvider, job: Job) -> None:
    assert sorted(p.tags()) == sorted((str(u.id), str(t)) for u in job.units() for t in range(1, u.try_ + 1))


# -- the plain path, and retries by error class ---------------------------------------------------------------
def test_a_job_runs_to_the_end_and_cleans_up_the_provider(tmp_path: Path) -> None:
    job, p = Job(tmp_path), FakeProvider()
    report = job.run(p)
    assert report["succeeded"] == 25 and report["failed"] == 0 and report["rounds"] == 1
    assert [u.requests for u in job.units()] == [10, 10, 5]
    assert [r["id"] for r in job.output()] == [f"k{i}" for i in range(1, 26)]
    assert all(r["response"] == f"answer to {r['id']}" for r in job.output())
    assert p.files == {} and p.calls["upload"] == 3 and p.calls["create_batch"] == 3
    assert report["prompt_tokens"] == 250 and report["cached_tokens"] == 100
    assert job.ledger.job(job.id).status == "done"


def test_each_error_class_is_handled_as_such_in_one_batch(tmp_path: Path) -> None:
    def answer(cid: str, body: dict[str, Any], n: int) -> Any:
        i = int(cid[1:])
        if i % 5 == 0:
            return (400, "invalid_prompt", "the prompt is not allowed")  # permanent: reported, never resent
        if i % 5 == 1 and n == 1:
            return (500, "engine_error", "boom")  # transient
        if i % 5 == 2 and n == 1:
            return (429, "rate_limit_exceeded", "slow down")  # transient
        if i % 5 == 3 and n == 1:
            return None  # in neither file: transient
        return ("ok", f"answer to {cid}")

    job, p = Job(tmp_path), FakeProvider(answer)
    report = job.run(p)
    res = job.results()
    for i in range(1, 26):
        r = res[f"k{i}"]
        if i % 5 == 0:
            assert (r["state"], r["attempts"], r["error_code"]) == ("failed", 1, "invalid_prompt")
            assert p.executed[f"k{i}"] == 1
        else:
            assert r["state"] == "ok" and r["attempts"] == (1 if i % 5 == 4 else 2), (i, r)
    assert report["failed_by_code"] == {"invalid_prompt": 5} and report["rounds"] == 2
    rows = {r["id"]: r for r in job.output()}
    assert rows["k5"]["error"] == "invalid_prompt: the prompt is not allowed" and rows["k5"]["response"] == ""
    assert [u.requests for u in job.units() if u.round == 2] == [10, 5]
    _one_batch_per_try(p, job)


def test_transient_failures_stop_at_max_attempts_and_are_reported(tmp_path: Path) -> None:
    job = Job(tmp_path, rows=6, max_attempts=3)
    p = FakeProvider(lambda cid, body, n: (503, None, "overloaded"))
    report = job.run(p)
    assert report["failed"] == 6 and report["rounds"] == 3 and report["failed_by_code"] == {"http_503": 6}
    assert all(r["attempts"] == 3 and r["state"] == "failed" for r in job.results().values())
    assert all(p.executed[c] == 3 for c in job.results())
    assert job.output()[0]["error"] == "http_503: overloaded"


def test_a_retry_round_is_cut_to_the_job_limits(tmp_path: Path) -> None:
    """25 rows fail once: round 2 holds them in files of at most --max-requests (one file would break it)."""
    job = Job(tmp_path, max_requests=10)
    p = FakeProvider(lambda cid, body, n: (500, "engine_error", "x") if n == 1 else ("ok", "fine"))
    job.run(p)
    second = [u for u in job.units() if u.round == 2]
    assert [u.requests for u in second] == [10, 10, 5]
    assert [u.shard for u in second] == [1, 2, 3]
    assert all(r["state"] == "ok" and r["attempts"] == 2 for r in job.results().values())


def test_an_expired_batch_keeps_its_finished_results(tmp_path: Path) -> None:
    job, p = Job(tmp_path, rows=10), FakeProvider()
    p.fate = lambda b: "expired:4" if b["metadata"]["coldbatch_round"] == "1" else "completed"
    job.run(p)
    res = job.results()
    assert [res[f"k{i}"]["attempts"] for i in range(1, 11)] == [1] * 4 + [2] * 6
    assert all(r["state"] == "ok" for r in res.values())
    assert [p.executed[f"k{i}"] for i in range(1, 11)] == [1] * 10  # the finished four were not sent again


def test_a_batch_the_provider_cancelled_is_retried(tmp_path: Path) -> None:
    job, p = Job(tmp_path, rows=10), FakeProvider()
    p.fate = lambda b: "cancelled-by-provider" if b["metadata"]["coldbatch_round"] == "1" else "completed"
    job.run(p)
    assert all(r["state"] == "ok" for r in job.results().values())
    assert sorted(r["attempts"] for r in job.results().values()) == [1] * 5 + [2] * 5


def test_a_failed_batch_reports_every_row_with_the_reason_and_deletes_its_input(tmp_path: Path) -> None:
    job, p = Job(tmp_path, rows=12), FakeProvider()
    p.fate = lambda b: "failed:invalid_json_line" if b["metadata"]["coldbatch_unit"] == "1" else "completed"
    report = job.run(p)
    assert [u.state for u in job.units()] == ["failed", "collected"]
    assert report["failed_by_code"] == {"invalid_json_line": 10} and report["succeeded"] == 2
    assert job.output()[0]["error"] == "invalid_json_line: batch failed: invalid_json_line"
    assert p.files == {}, "the failed batch's input file must be deleted too"


# -- the provider's enqueued-token quota ----------------------------------------------------------------------
def test_token_limit_exceeded_sends_the_same_file_again_as_a_new_try(tmp_path: Path) -> None:
    job, p = Job(tmp_path, rows=10), FakeProvider()
    tries: list[str] = []

    def fate(b: dict[str, Any]) -> str:
        tries.append(b["metadata"]["coldbatch_try"])
        return "failed:token_limit_exceeded" if len(tries) <= 2 else "completed"

    p.fate = fate
    job.run(p)
    assert tries == ["1", "2", "3"] and job.units()[0].try_ == 3
    assert p.calls["upload"] == 1, "the file is uploaded once and reused"
    _one_batch_per_try(p, job)
    assert all(r["state"] == "ok" and r["attempts"] == 1 for r in job.results().values())


def test_token_limit_exceeded_forever_ends_in_reported_rows_not_an_endless_loop(tmp_path: Path) -> None:
    job, p = Job(tmp_path, rows=3), FakeProvider()
    p.fate = lambda b: "failed:token_limit_exceeded"
    report = job.run(p)
    assert report["failed_by_code"] == {"token_limit_exceeded": 3}
    assert job.units()[0].try_ == C.MAX_REQUEUES


def test_max_enqueued_tokens_holds_back_units_over_the_quota(tmp_path: Path) -> None:
    job = Job(tmp_path, rows=30, max_requests=10, max_enqueued_tokens=1)
    p = FakeProvider()
    runner = job.runner(p)
    runner.prepare()
    units = job.units()
    assert all(u.tokens > 0 for u in units), "each unit knows its prompt tokens"
    asyncio.run(runner.step(units))
    assert [u.state for u in job.units()] == ["uploaded", "planned", "planned"]  # one at a time
    job.ledger.set_job(
        job.id,
        options={
            **job.ledger.job(job.id).options,
            "max_enqueued_tokens": units[0].tokens + units[1].tokens,
        },
    )
    runner = job.runner(p)
    asyncio.run(runner.step(job.ledger.units(job.id, LG.OPEN_STATES)))
    assert [u.state for u in job.units()] == ["created", "uploaded", "planned"]


# -- crash windows ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["upload", "create_batch"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_around_a_paid_call_never_sends_it_twice(tmp_path: Path, method: str, when: str) -> None:
    job, p = Job(tmp_path), FakeProvider()
    p.hooks[method] = [when]  # the first unit's call dies, before or after it took effect
    with pytest.raises(Crash):
        job.run(p)
    crashed = [u for u in job.units() if u.state in ("uploading", "creating")]
    assert len(crashed) == 1
    job.run(p)  # the resume: a new Runner, no intents of its own
    _one_batch_per_try(p, job)
    uploads = [f["filename"] for f in p.files.values()]
    assert uploads == [], "all cleaned up"
    assert p.calls[method] == 3 + (1 if when == "before" else 0)
    assert all(r["state"] == "ok" for r in job.results().values()) and len(job.results()) == 25


@pytest.mark.parametrize("method", ["upload", "create_batch"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_timed_out_paid_call_is_reconciled_before_it_is_sent_again(tmp_path: Path, method: str, when: str) -> None:
    """What the SDK's own retry would get wrong: a POST that timed out may have taken effect."""
    job, p = Job(tmp_path), FakeProvider()
    p.hooks[method] = [f"retry-{when}"]
    job.run(p)
    _one_batch_per_try(p, job)
    assert p.calls[method] == 3 + (1 if when == "before" else 0)
    assert len(job.results()) == 25


def test_a_crash_between_collection_and_cleanup_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, p = Job(tmp_path), FakeProvider()
    real = C.clean_remote
    calls = [0]

    async def clean(ctx: RunContext, u: dict[str, Any], b: dict[str, Any]) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise Crash("died after collecting unit 2")
        await real(ctx, u, b)

    monkeypatch.setattr(C, "clean_remote", clean)
    with pytest.raises(Crash):
        job.run(p)
    assert p.files, "unit 2's files are still on the provider"
    summary_before = job.ledger.summary(job.id)
    job.run(p)
    assert p.files == {}
    assert job.ledger.summary(job.id)["prompt_tokens"] == 250, "nothing counted twice"
    assert summary_before["succeeded"] == 20


def test_a_crash_after_writing_the_retry_files_plans_the_round_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Job(tmp_path)
    p = FakeProvider(lambda cid, body, n: (500, "engine_error", "x") if n == 1 else ("ok", "fine"))
    real = LG.Ledger.add_units
    calls = [0]

    def add_units(self: LG.Ledger, job_id: str, units: Any) -> None:
        units = list(units)
        if units and units[0]["round"] == 2:
            calls[0] += 1
            if calls[0] == 1:
                raise Crash("died before the round-2 units were recorded")
        real(self, job_id, units)

    monkeypatch.setattr(LG.Ledger, "add_units", add_units)
    with pytest.raises(Crash):
        job.run(p)
    assert (job.root / "jobs" / job.id / "retries").is_dir()
    job.run(p)
    assert [(u.round, u.shard) for u in job.units()] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert all(p.executed[c] == 2 for c in job.results())


def test_a_crash_while_writing_output_keeps_the_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, p = Job(tmp_path), FakeProvider()
    job.run(p)
    before = job.out.read_bytes()
    real = LG.Ledger.results_for

    def results_for(self: LG.Ledger, job_id: str, ids: Any, **kw: Any) -> Any:
        raise Crash("died while writing OUTPUT")

    monkeypatch.setattr(LG.Ledger, "results_for", results_for)
    with pytest.raises(Crash):
        job.run(p)
    assert job.out.read_bytes() == before
    assert not [x for x in job.out.parent.iterdir() if x.name.endswith(".part")]
    monkeypatch.setattr(LG.Ledger, "results_for", real)


# -- cancel ---------------------------------------------------------------------------------------------------
def _submit(job: Job, p: FakeProvider) -> None:
    runner = job.runner(p)
    runner.prepare()
    for _ in range(4):
        asyncio.run(runner.step(job.ledger.units(job.id, LG.OPEN_STATES)))
    assert {u.state for u in job.units()} == {"created"}


def test_cancel_then_resume_keeps_the_job_cancelled(tmp_path: Path) -> None:
    job, p = Job(tmp_path), FakeProvider()
    p.fate = lambda b: "running"
    _submit(job, p)
    asyncio.run(job.runner(p).cancel())
    report = asyncio.run(job.runner(p, _sleep_limit(20)).run()).details  # e.g. `coldbatch resume` after the cancel
    assert job.ledger.job(job.id).status == "cancelled"
    assert len(p.batches) == 3, "nothing is sent again after a cancel"
    assert report["failed_by_code"] == {"batch_cancelled": 25}
    assert all(r["error"].startswith("batch_cancelled") for r in job.output())


def test_a_cancel_asked_by_another_process_cancels_the_running_batches(tmp_path: Path) -> None:
    job, p = Job(tmp_path), FakeProvider()
    p.fate = lambda b: "running"
    _submit(job, p)
    job.ledger.set_job(job.id, status="cancelling")  # what `coldbatch cancel` does while `run` holds the job
    asyncio.run(job.runner(p, _sleep_limit(20)).run())
    assert sorted(p.cancel_calls) == sorted(p.batches)
    assert job.ledger.job(job.id).status == "cancelled"
    assert p.files == {}


def test_only_one_process_drives_a_job(tmp_path: Path) -> None:
    a, b = _JobLock(tmp_path / "job"), _JobLock(tmp_path / "job")
    assert a.acquire()
    assert not b.acquire() and b.holder().isdigit()
    a.release()
    assert b.acquire()
    b.release()


# -- budget -----------------------------------------------------------------------------------------------------
def test_the_budget_is_checked_on_the_estimate(tmp_path: Path) -> None:
    job = Job(tmp_path, max_cost=1e-9, provider="https://api.example.test/v1")  # a paid target
    runner = job.runner(FakeProvider())
    est = runner.prepare()
    with pytest.raises(BudgetExceeded, match="nothing was sent"):
        runner.check_budget(est)
    opts = runner.opts  # frozen: each variation is a changed copy
    unpriced = JobEstimate.of({"totals": {"batch_cost_usd": None}})
    check_budget(replace(opts, max_cost=100.0), est)
    with pytest.raises(BudgetExceeded, match="price"):
        check_budget(replace(opts, max_cost=1.0), unpriced)
    local = replace(opts, provider="embedded")  # a model on this machine costs nothing (issue 16): no budget
    check_budget(local, est)
    check_budget(local, unpriced)


def test_run_refuses_an_output_format_it_could_not_write_before_anything_starts(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from coldbatch.cli import main

    job = Job(tmp_path)  # just for its input file
    res = CliRunner().invoke(
        main,
        [
            "run",
            str(job.input),
            "--out",
            str(tmp_path / "o.xlsx"),
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--yes",
        ],
    )
    assert res.exit_code == 2 and "--out" in res.stderr and ".csv" in res.stderr
    assert not (tmp_path / "coldbatch-home" / "ledger.sqlite3").exists(), "no job was created"


def test_resume_refuses_a_job_another_process_drives_and_cancel_asks_it_to_stop(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from coldbatch.cli import main

    home = tmp_path / "coldbatch-home"  # COLDBATCH_HOME (tests/conftest.py)
    lg = LG.Ledger(home / "ledger.sqlite3")
    lg.create_job(
        "busy",
        str(tmp_path / "in.csv"),
        str(tmp_path / "out.csv"),
        asdict(RunOptions(spec=RequestSpec(model="m", prompt="{x}").describe(), provider="http://x/v1")),
    )
    assert lg.set_job("busy", status="prepared") and lg.set_job("busy", status="running")
    held = _JobLock(home / "jobs" / "busy")
    assert held.acquire()
    try:
        res = CliRunner().invoke(main, ["resume", "busy", "--yes"])
        assert res.exit_code == 2 and "being run by another process" in res.stderr
        assert lg.job("busy").status == "running"
        res = CliRunner().invoke(main, ["cancel", "busy"])
        assert res.exit_code == 0 and "asked it to cancel" in res.stderr
        assert lg.job("busy").status == "cancelling"
    finally:
        held.release()
        lg.close()


# -- OUTPUT of a job ------------------------------------------------------------------------------------------
def test_output_refuses_an_input_edited_since_the_job_prepared_it(tmp_path: Path) -> None:
    """Answers are joined by recomputing each row's custom_id; an edited input would shift them."""
    from coldbatch.errors import InputError
    from coldbatch.runner.report import write_job_output

    job, p = Job(tmp_path, rows=6), FakeProvider()
    job.run(p)
    before = job.out.read_bytes()
    original = job.input.read_bytes()
    job.input.write_bytes(original.replace(b"text 3", b"text three"))
    with pytest.raises(InputError, match="changed since the job prepared it"):
        write_job_output(job.ledger, job.ledger.job(job.id), job.root)  # type: ignore[arg-type]
    assert job.out.read_bytes() == before
    job.input.write_bytes(original + b"k7,text 7\n")
    with pytest.raises(InputError, match="more requests"):
        write_job_output(job.ledger, job.ledger.job(job.id), job.root)  # type: ignore[arg-type]
    job.input.write_bytes(original)
    assert write_job_output(job.ledger, job.ledger.job(job.id), job.root)["rows"] == 6  # type: ignore[arg-type]
    assert job.out.read_bytes() == before


def test_output_shows_rows_rejected_by_the_jobs_own_limits_with_their_reason(tmp_path: Path) -> None:
    job = Job(tmp_path, rows=3, texts=["short", "x" * 400, "short too"], max_line_bytes=300)
    job.run(FakeProvider())
    rows = job.output()
    assert [r["error"][:16] for r in rows] == ["", "line_too_large: ", ""]
    assert rows[1]["custom_id"] == "" and rows[2]["response"] == "answer to k3"


def test_collect_rewrites_output_from_the_ledger_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from coldbatch.cli import main

    job = Job(tmp_path, rows=6)
    job.run(FakeProvider())
    monkeypatch.setenv("COLDBATCH_HOME", str(job.root))
    res = CliRunner().invoke(main, ["collect", job.id, "--out", str(tmp_path / "again.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again.csv").read_bytes() == job.out.read_bytes()
    res = CliRunner().invoke(main, ["collect", job.id, "--out", str(tmp_path / "again.xlsx")])
    assert res.exit_code == 2


def test_dedup_sends_each_question_once_and_fans_answers_out(tmp_path: Path) -> None:
    texts = ["same", "other", "same", "same", "third", "other"]
    job, p = Job(tmp_path, rows=6, texts=texts, dedup=True, cache=False), FakeProvider()
    report = job.run(p)
    assert report["succeeded"] == 6 and report["requests_sent"] == 3 and report["distinct_requests"] == 3
    out = job.output()
    by_text: dict[str, set[str]] = {}
    for row, text in zip(out, texts, strict=True):
        by_text.setdefault(text, set()).add(row["response"])
        assert row["response"].startswith("answer to k-")  # sent under the question's key
    assert all(len(v) == 1 for v in by_text.values())  # rows asking the same question share one answer
    assert len({next(iter(v)) for v in by_text.values()}) == 3


def test_cache_answers_a_rerun_without_sending(tmp_path: Path) -> None:
    first = Job(tmp_path, rows=5, dedup=True)
    r1 = first.run(FakeProvider())
    assert r1["requests_sent"] == 5
    first.ledger.create_job("job-2", str(first.input), str(tmp_path / "out2.csv"), first.ledger.job(first.id).options)
    p2 = FakeProvider()
    r2 = asyncio.run(_run(Runner(first.ledger, p2, "job-2", first.root, sleep=_no_sleep)))
    assert r2["requests_sent"] == 0 and r2["answered_from_cache"] == 5
    with (tmp_path / "out2.csv").open() as fh:
        again = list(csv.DictReader(fh))
    assert [r["response"] for r in again] == [r["response"] for r in first.output()]
    assert {r["attempts"] for r in again} == {"0"}


async def _run(runner: Runner) -> dict[str, Any]:
    runner.prepare()
    return (await runner.run()).to_json()


@pytest.mark.parametrize("moving", [True, False])
def test_polling_backs_off_only_while_no_batch_moves(tmp_path: Path, moving: bool) -> None:
    """While a batch's finished count grows, polls stay at --poll-interval (its results, and the provider's
    next batch, would otherwise wait out a long backoff); a batch that does not move is polled less and less."""
    job, p = Job(tmp_path, rows=5), FakeProvider()
    options = job.ledger.job(job.id).options
    job.ledger.set_job(job.id, options={**options, "poll_interval": 2.0})
    p.fate = lambda b: "running"
    polls = [0]
    real = p.retrieve

    async def retrieve(batch_id: str) -> dict[str, Any]:
        b = await real(batch_id)
        polls[0] += 1
        if polls[0] >= 8:
            p._run(p.batches[batch_id], "completed")
            return dict(p.batches[batch_id])
        b["request_counts"] = {"total": 5, "completed": polls[0] if moving else 0, "failed": 0}
        return b

    p.retrieve = retrieve  # type: ignore[method-assign]
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    assert job.run(p, sleep)["succeeded"] == 5
    if moving:
        assert waits[1:] and all(w == 2.0 for w in waits[1:]), waits
    else:
        assert waits == sorted(waits) and waits[-1] > 2 * waits[0], waits
