"""The report phase: progress while a job runs, and at its end OUTPUT and the report, in every mode.

`finish` is the one end of a run, batch or sync: it sweeps what the provider still holds, (re)writes OUTPUT
from the ledger alone (so `coldbatch collect` can do the same later), prices what was used and stores the
report with the job's final status. The report is stored as JSON (the dict the CLI prints) and handed out
as a frozen `JobReport`: the headline figures typed, the whole report in `details`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldbatch.builder.manifest import read_manifest
from coldbatch.core.exit_status import exit_code
from coldbatch.core.frozen import frozen
from coldbatch.estimate import prices as P
from coldbatch.runner import examples
from coldbatch.runner import ledger as LG
from coldbatch.runner.collect import sweep_remote
from coldbatch.runner.context import CANCELLED, RunContext, RunState
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.options import RunOptions
from coldbatch.runner.output_rows import write_output  # picks the writer: small inputs row by row


def write_job_output(ledger: LG.LedgerStore, job: LG.JobRecord, root: Path, out: Path | None = None) -> dict[str, int]:
    """(Re)write a job's OUTPUT from the ledger: joined with the same request options and limits the job
    prepared with, after checking that the input still builds exactly the requests that were sent."""
    opts = RunOptions.from_json(job.options, job.id)
    lim = opts.limits
    manifest = read_manifest(root / "jobs" / job.id / "shards")
    classified = examples.classified(ledger, job.id, opts.examples) if opts.examples else None
    return write_output(
        ledger,
        job.id,
        Path(job.input_path),
        out or Path(job.output_path),
        opts.request_spec(),
        fmt=opts.fmt,
        max_line_bytes=min(lim.max_line_bytes, lim.max_bytes - 1),
        shards=manifest["shards"] if manifest else None,
        classified=classified,
        prefix=opts.output_prefix,
    )


def progress(ctx: RunContext, st: RunState) -> dict[str, Any]:
    """Units by state, the ledger's results, and `remote_done`: the requests that running batches have
    finished by the provider's `request_counts` (not collected yet), so a display can move while a batch
    runs; `requests`: the first round's requests to send (a progress bar's total)."""
    units = ctx.ledger.units(ctx.job_id)
    by: dict[str, int] = {}
    for u in units:
        key = u.batch_status if u.state == LG.CREATED and u.batch_status else u.state
        by[key] = by.get(key, 0) + 1
    remote = sum(st.counts.get(u.id, 0) for u in units if u.state == LG.CREATED)
    total = sum(u.requests for u in units if u.round == 1)
    return {
        "units": len(units),
        "by_state": by,
        "remote_done": remote,
        "requests": total,
        **ctx.ledger.summary(ctx.job_id),
    }


@dataclass(frozen=True)
class Costs:
    """What the used tokens cost at batch and at sync prices (None: the model has no price)."""

    batch_usd: float | None
    sync_usd: float | None

    @classmethod
    def of(cls, price: P.ModelPrice | None, summary: dict[str, Any]) -> Costs:
        if price is None:
            return cls(None, None)
        used = (summary["prompt_tokens"], summary["completion_tokens"])
        cached = summary["cached_tokens"]
        return cls(
            float(price.cost(*used, batch=True, cached_tokens=cached)),
            float(price.cost(*used, batch=False, cached_tokens=cached)),
        )


@dataclass(frozen=True, slots=True)
class JobReport:
    """A finished job's summary: what a user checks after a run (the whole stored report in `details`)."""

    job_id: str
    output: Path
    rows: int
    succeeded: int
    failed: int
    cost_usd: float | None
    mode: str | None
    exit_status: int  #: the CLI's exit code for it (core/exit_status.py): 0 every row answered, 4 some not, ...
    details: Mapping[str, Any]  #: the report as stored (read-only JSON): tokens, costs, rounds, route, ...

    @classmethod
    def of(cls, report: Mapping[str, Any]) -> JobReport:
        """The one reading of a stored report."""
        return cls(
            job_id=str(report["job"]),
            output=Path(report["output"]),
            rows=int(report["rows"]),
            succeeded=int(report["succeeded"]),
            failed=int(report["failed"]),
            cost_usd=report.get("cost_usd"),
            mode=report.get("mode"),
            exit_status=exit_code(report),  # one rule for the CLI's exit code and this field
            details=frozen(dict(report)),
        )

    def to_json(self) -> dict[str, Any]:
        """The report as the ledger stores it and `coldbatch run` prints it (a plain copy of `details`)."""
        return copy.deepcopy(dict(self.details))


async def finish(ctx: RunContext, started: float) -> JobReport:
    """Sweep the provider, write OUTPUT, store the report and the job's final status; returns the report."""
    await sweep_remote(ctx)
    job = ctx.job()
    written = write_job_output(ctx.ledger, job, ctx.root)
    summary = ctx.ledger.summary(ctx.job_id)
    price = ctx.prices.lookup(ctx.opts.spec["model"])
    report = _report(ctx, job, written, summary, Costs.of(price, summary), JobEstimate.of(job.estimate))
    report["seconds"] = round(time.time() - started, 2)
    rescued = ctx.ledger.rescued_summary(ctx.job_id)
    if rescued["requests"]:
        report["deadline_rescue"] = _rescue_section(price, rescued, written)
    final = "cancelled" if job.status in CANCELLED else "done"
    ctx.ledger.set_job(ctx.job_id, status=final, report=report)
    ctx.emit("done", report)
    return JobReport.of(report)


def _report(
    ctx: RunContext,
    job: LG.JobRecord,
    written: dict[str, int],
    summary: dict[str, Any],
    costs: Costs,
    est: JobEstimate,
) -> dict[str, Any]:
    """The report's figures, in the order the CLI prints them."""
    paid = costs.sync_usd if ctx.opts.mode == "sync" else costs.batch_usd  # sync mode pays sync prices
    sync_all = est.sync_cost_usd  # every row sent one by one at sync prices: the baseline
    return {
        "job": ctx.job_id,
        "output": str(job.output_path),
        "rows": written["rows"],
        "rejected_rows": written["rejected"],
        **summary,
        "succeeded": written["succeeded"],
        "failed": written["failed"],
        "answered_from_cache": written["from_cache"],
        "distinct_requests": est.distinct_requests,
        "cache_hits": est.cache_hits,
        "requests_sent": est.planned_to_send,
        "rounds": ctx.ledger.max_round(ctx.job_id),
        "cost_batch_usd": costs.batch_usd,
        "cost_sync_usd": costs.sync_usd,
        "cost_sync_all_rows_usd": sync_all,
        "cost_usd": paid,
        "mode": ctx.opts.mode,
        "route": est.route,
        "saving_pct": round((1 - paid / sync_all) * 100, 2) if paid is not None and sync_all else None,
        "estimated_batch_usd": est.cost_to_send_usd,
        "estimated_input_tokens": est.input_tokens_to_send,
    }


def _rescue_section(price: P.ModelPrice | None, rescued: dict[str, int], written: dict[str, int]) -> dict[str, Any]:
    """What a deadline rescue sent, and what it cost at sync prices over what batch would have."""
    extra = None
    if price is not None:
        tokens = (rescued["prompt_tokens"], rescued["completion_tokens"])
        extra = float(price.cost(*tokens, batch=False) - price.cost(*tokens, batch=True))
    return {**rescued, "rows_via_batch_or_cache": written["rows"] - rescued["rows"], "extra_cost_usd": extra}
