"""The cancel phase: a user's cancel (or a deadline rescue taking over) winds the job's batches down.

Nothing new is sent; a unit caught in an intent is reconciled first (its upload or batch may exist, to be
deleted or cancelled); running batches are cancelled and then polled and collected like any other, so
what the provider finished before the cancel is kept.
"""

from __future__ import annotations

from coldbatch.runner import collect as C
from coldbatch.runner import ledger as LG
from coldbatch.runner import submit as S
from coldbatch.runner.context import TERMINAL, RunContext, RunState
from coldbatch.runner.report import progress

BEFORE_SUBMISSION = "cancelled before submission"


async def cancel(ctx: RunContext, st: RunState) -> None:
    """Cancel every running batch of the job; the next `run` collects what finished."""
    ctx.ledger.set_job(ctx.job_id, status="cancelling")
    for u in ctx.ledger.units(ctx.job_id, [LG.CREATED]):
        await ctx.provider.cancel(u.need_batch_id())
        st.cancel_sent.add(u.id)
    for u in ctx.ledger.units(ctx.job_id, [LG.PLANNED, LG.UPLOADED]):
        ctx.ledger.move_unit(u.id, LG.FAILED, detail=BEFORE_SUBMISSION)
    ctx.emit("cancelling", {})


async def step_cancelling(ctx: RunContext, st: RunState, units: list[LG.UnitRecord]) -> bool:
    """While cancelling: send nothing new, cancel what runs, collect what the provider finished.

    The cancel may have been asked by another process (`coldbatch cancel` while `run` holds the job), so
    every running batch is cancelled here too, once per process (cancelling twice is harmless).
    """
    for u in units:
        if u.state == LG.UPLOADING:  # the upload may have reached the provider: find it, to delete it
            found = None if u.id in st.fresh else await S.find_file(ctx, u)
            ctx.ledger.move_unit(u.id, LG.FAILED, detail=BEFORE_SUBMISSION, file_id=found["id"] if found else None)
        elif u.state in (LG.PLANNED, LG.UPLOADED):
            ctx.ledger.move_unit(u.id, LG.FAILED, detail=BEFORE_SUBMISSION)
        elif u.state == LG.CREATING:
            await _cancel_creating(ctx, st, u)
        else:
            if u.id not in st.cancel_sent and u.batch_status not in TERMINAL | {"cancelling"}:
                await ctx.provider.cancel(u.need_batch_id())
                st.cancel_sent.add(u.id)
            await C.poll(ctx, st, u)
    ctx.emit("progress", progress(ctx, st))
    return False


async def _cancel_creating(ctx: RunContext, st: RunState, u: LG.UnitRecord) -> None:
    """A unit whose create may have reached the provider: cancel the batch if it exists, else fail the unit."""
    found = await S.find_batch(ctx, u)
    if found is None:
        ctx.ledger.move_unit(u.id, LG.FAILED, detail=BEFORE_SUBMISSION)
    else:
        ctx.ledger.move_unit(u.id, LG.CREATED, batch_id=found["id"], batch_status=found["status"])
        await ctx.provider.cancel(found["id"])
        st.cancel_sent.add(u.id)
