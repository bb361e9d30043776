"""`Runner`: one job's run, for its callers (the job API in `coldbatch/job.py`, tests): prepare it, check
its budget, run it to its end, cancel it.

The work is done by the runner's phases, each a module of functions over a frozen `RunContext` (what the
run is: ledger, provider, job id, options) and a `RunState` (what this process learned while running):
`prepare` (shards, units, estimate), `submit` (upload and create, reconciled after a crash), `collect`
(poll a batch, record its results, clean up), `retry` (a new round for transient failures), `cancel`, and
`report` (progress, OUTPUT and the report). How the rows are sent is a mode, chosen once per run from the
job's options by `choose_mode`: `BatchMode` (the Batch API, with a deadline rescue through the sync API
when --deadline is given) or `SyncMode` (the sync API, row by row).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coldbatch.errors import InputError, UsageError
from coldbatch.estimate import prices as P
from coldbatch.providers.base import BatchProvider
from coldbatch.runner import batch_mode
from coldbatch.runner import ledger as LG
from coldbatch.runner.batch_mode import BatchMode
from coldbatch.runner.cancel import cancel
from coldbatch.runner.context import Events, RunContext, RunState, Sleep, silent
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.options import RunOptions
from coldbatch.runner.prepare import check_budget, prepare
from coldbatch.runner.report import JobReport, progress
from coldbatch.runner.sync_mode import SyncMode

if TYPE_CHECKING:
    from coldbatch.hotpath.client import SyncClient

__all__ = ["Mode", "Runner", "SyncClientFactory", "choose_mode"]

#: opens the sync client a job's sync mode or deadline rescue sends through, for the job's options
SyncClientFactory = Callable[[RunOptions], "SyncClient"]


class Mode(Protocol):
    """How a job's rows are sent: drives the job to its end and returns its report (`report.finish`)."""

    async def run(self, ctx: RunContext, st: RunState) -> JobReport: ...


def choose_mode(opts: RunOptions, sync_client: SyncClientFactory | None) -> Mode:
    """The job's mode, once: sync mode needs a sync client; batch mode gets one only for a --deadline rescue.
    (`auto` is resolved to batch or sync before the job is run; unresolved it runs as batch.)"""
    if opts.mode == "sync":
        if sync_client is None:
            raise UsageError("sync mode needs a sync client: run the job through coldbatch.run_job or the CLI")
        return SyncMode(lambda: sync_client(opts))
    if opts.deadline is None or sync_client is None:
        return BatchMode()
    return BatchMode(rescue_client=lambda: sync_client(opts))


class Runner:
    """A job's run: a `RunContext` built from the ledger's job row, a fresh `RunState`, and the mode."""

    def __init__(
        self,
        ledger: LG.LedgerStore,
        provider: BatchProvider,
        job_id: str,
        root: Path,
        *,
        on_event: Events | None = None,
        prices: P.PriceTable | None = None,
        sleep: Sleep = asyncio.sleep,
        sync_client: SyncClientFactory | None = None,
    ) -> None:
        job = ledger.job(job_id)
        if job is None:
            raise InputError(f"No job {job_id!r} in the ledger {ledger.path}")
        opts = RunOptions.from_json(job.options, job_id)
        self.ctx = RunContext(ledger, provider, job_id, root, opts, on_event or silent, prices or P.load(), sleep)
        self.state = RunState()
        self.sync_client = sync_client

    @property
    def opts(self) -> RunOptions:
        return self.ctx.opts

    @property
    def job_id(self) -> str:
        return self.ctx.job_id

    def prepare(self) -> JobEstimate:
        """Build shards and units (idempotent), and estimate the cost. Returns the estimate."""
        return prepare(self.ctx)

    def check_budget(self, est: JobEstimate) -> None:
        check_budget(self.ctx.opts, est)

    async def run(self) -> JobReport:
        """Drive the job to its end in its mode (chosen here, once); returns the report."""
        return await choose_mode(self.ctx.opts, self.sync_client).run(self.ctx, self.state)

    async def step(self, units: list[LG.UnitRecord]) -> bool:
        """One batch-mode pass over `units` (for tests that stop a job midway)."""
        return await batch_mode.step(self.ctx, self.state, units)

    async def cancel(self) -> None:
        """Cancel every running batch of the job; the next `run` collects what finished."""
        await cancel(self.ctx, self.state)

    def progress(self) -> dict[str, Any]:
        return progress(self.ctx, self.state)
