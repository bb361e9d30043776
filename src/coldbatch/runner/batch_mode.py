"""Batch mode: the loop that drives a job's units through the Batch API until every row has a final answer.

Each pass over the job's open units does at most one remote step per unit and commits it (`submit`,
`collect`), so the job can be killed at any instant and resumed: see `core/unit_state.py` for the
intent/confirm protocol. When no unit is open, the rows that failed transiently become a new round
(`retry`) until `max_attempts`; then `report.finish` writes OUTPUT. With `--deadline`, a pass may hand the
late rest to the sync API instead (`deadline.py` decides; the rescue runs from here).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coldbatch.runner import collect as C
from coldbatch.runner import deadline, structured
from coldbatch.runner import ledger as LG
from coldbatch.runner import submit as S
from coldbatch.runner.cancel import step_cancelling
from coldbatch.runner.context import WINDING_DOWN, RunContext, RunState
from coldbatch.runner.report import JobReport, finish, progress
from coldbatch.runner.retry import plan_retry_round

if TYPE_CHECKING:
    from coldbatch.hotpath.client import SyncClient

POLL_CONCURRENCY = 16  #: status requests in flight at once while polling running batches


@dataclass(frozen=True)
class BatchMode:
    """The job's rows go as batches; `rescue_client` (given with --deadline) opens the sync client that
    sends what the batches would deliver late."""

    rescue_client: Callable[[], SyncClient] | None = None

    async def run(self, ctx: RunContext, st: RunState) -> JobReport:
        """Submit, poll, collect and retry until done; then write OUTPUT. Returns the report."""
        started = time.time()
        if ctx.status() not in WINDING_DOWN:  # these survive a crash and a resume
            ctx.ledger.set_job(ctx.job_id, status="running")
        interval = min(ctx.opts.poll_interval, 1.0)
        while True:
            open_units = ctx.ledger.units(ctx.job_id, LG.OPEN_STATES)
            if not open_units:
                if plan_retry_round(ctx):
                    continue
                break
            if await self._maybe_rescue(ctx, st, open_units):
                continue
            if _past_deadline_after_rescue(ctx):
                break  # rescued: what the cancelled batches still finish is collected by a later `resume`
            st.moving = False
            if await step(ctx, st, open_units):
                interval = min(ctx.opts.poll_interval, 1.0)
            else:
                await ctx.sleep(interval)
                interval = _next_interval(ctx, st, interval)
        return await finish(ctx, started)

    async def _maybe_rescue(self, ctx: RunContext, st: RunState, units: list[LG.UnitRecord]) -> bool:
        """With --deadline: start the sync rescue when the batches will be late (see deadline.py)."""
        if ctx.opts.deadline is None or self.rescue_client is None or ctx.status() != "running":
            return False
        started = min((u.intent_at or time.time() for u in ctx.ledger.units(ctx.job_id)), default=time.time())
        remaining = sum(u.requests - st.counts.get(u.id, 0) for u in units)
        done = sum(st.counts.values()) + sum(u.requests for u in ctx.ledger.units(ctx.job_id, [LG.COLLECTED]))
        if not deadline.late(
            now=time.time(), deadline=ctx.opts.deadline, started=started, done=done, remaining=remaining
        ):
            return False
        ctx.ledger.set_job(ctx.job_id, status="rescued")
        ctx.emit(
            "rescue", {"remaining": remaining, "done": done, "seconds_left": round(ctx.opts.deadline - time.time(), 1)}
        )
        client = self.rescue_client()
        try:
            sent = await deadline.rescue(
                ctx.ledger,
                ctx.job_id,
                client,
                attempt=ctx.ledger.max_round(ctx.job_id) + 1,
                labels=structured.label_field(ctx.opts.request_spec().answer_schema),
            )
        finally:
            await client.aclose()
        ctx.emit("rescued", {"requests": sent})
        await step_cancelling(ctx, st, ctx.ledger.units(ctx.job_id, LG.OPEN_STATES))  # cancel what still runs
        return True


def _next_interval(ctx: RunContext, st: RunState, interval: float) -> float:
    """Back off only while nothing moves: a batch whose counts grow finishes soon, and each backed-off poll
    would leave its results (and the provider's next batch) waiting."""
    if st.moving:
        return ctx.opts.poll_interval
    return min(interval * 1.5, max(ctx.opts.poll_interval, ctx.opts.max_poll_interval))


def _past_deadline_after_rescue(ctx: RunContext) -> bool:
    """After a rescue, stop waiting for the cancelled batches at the deadline, or as soon as every request
    has its final answer (they could only add duplicates)."""
    if not (ctx.status() == "rescued" and ctx.opts.deadline):
        return False
    s = ctx.ledger.summary(ctx.job_id)
    total = sum(u.requests for u in ctx.ledger.units(ctx.job_id) if u.round == 1)
    return time.time() >= ctx.opts.deadline or s["succeeded"] + s["failed"] >= total


async def step(ctx: RunContext, st: RunState, units: list[LG.UnitRecord]) -> bool:
    """One pass: poll every running batch at once, then one step for each unit the caps let start; True if
    anything changed."""
    if ctx.status() in WINDING_DOWN:
        return await step_cancelling(ctx, st, units)
    progressed = False
    in_flight = sum(1 for u in units if u.state != LG.PLANNED)
    queued: dict[str, int] = {}  # prompt tokens in flight per model, counting units started in this pass
    for u in units:
        if u.state != LG.PLANNED:
            queued[u.model] = queued.get(u.model, 0) + u.tokens
    polled = await _retrieve_running(ctx, [u for u in units if u.state == LG.CREATED])
    for u in units:
        if u.state == LG.PLANNED:
            if in_flight >= ctx.opts.max_in_flight or not _tokens_ok(ctx, u, queued):
                continue
            in_flight += 1
            queued[u.model] = queued.get(u.model, 0) + u.tokens
        if u.id in polled:
            progressed |= await C.poll(ctx, st, u, polled[u.id])
        else:
            progressed |= await S.advance(ctx, st, u)
    ctx.emit("progress", progress(ctx, st))
    return progressed


async def _retrieve_running(ctx: RunContext, running: list[LG.UnitRecord]) -> dict[int, dict[str, Any]]:
    """Every running batch's status at once: one round trip per pass instead of one per batch."""
    gate = asyncio.Semaphore(POLL_CONCURRENCY)

    async def retrieve(batch_id: str) -> dict[str, Any]:
        async with gate:
            return await ctx.provider.retrieve(batch_id)

    found = await asyncio.gather(*(retrieve(u.need_batch_id()) for u in running))
    return dict(zip([u.id for u in running], found, strict=True))


def _tokens_ok(ctx: RunContext, unit: LG.UnitRecord, queued: dict[str, int]) -> bool:
    """--max-enqueued-tokens: a unit starts only if its model's queue has room for it (or is empty)."""
    cap = ctx.opts.max_enqueued_tokens
    if cap is None:
        return True
    q = queued.get(unit.model, 0)
    return q == 0 or q + unit.tokens <= cap
