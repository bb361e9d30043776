"""The submit phase: one unit's upload and batch create, each announced in the ledger before it is sent.

The two calls that create billable objects (upload, batch create) are never retried blindly: the intent
(`uploading`, `creating`, with its time) is committed first, and a unit found in an intent state that this
process did not write (a crash, a resume) is reconciled against the provider (its file by name and size,
its batch by metadata tag) before anything is sent again. When a call fails in a way that may have reached
the provider (`Retryable`), the runner looks for the object by its tag first, exactly as after a crash,
and only then sends the call again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from coldbatch.hotpath import limits as LM
from coldbatch.providers.base import Retryable
from coldbatch.runner import ledger as LG
from coldbatch.runner.context import RunContext, RunState

logger = logging.getLogger(__name__)

#: sends of one upload / create call after a `Retryable` failure (each preceded by a reconciliation), waits of
#: up to 2, 4, 8, 16 s (full jitter)
POST_ATTEMPTS, POST_RETRY = 5, LM.RetryPolicy(max_attempts=5, base=2.0, cap=30.0)
#: how far before its recorded intent a found object may have been made (clock skew with the provider)
SKEW = 120


async def advance(ctx: RunContext, st: RunState, u: LG.UnitRecord) -> bool:
    """At most one remote step for this unit (not a running one: those are polled); True if its state changed."""
    state = u.state
    if state == LG.PLANNED:
        ctx.ledger.move_unit(u.id, LG.UPLOADING, intent_at=int(time.time()))
        st.fresh.add(u.id)
        u = replace(u, state=LG.UPLOADING, intent_at=int(time.time()))
        state = LG.UPLOADING
    if state == LG.UPLOADING:
        await upload(ctx, st, u)
        return True
    if state == LG.UPLOADED:
        if time.monotonic() < st.not_before.get(u.id, 0.0):
            return False
        ctx.ledger.move_unit(u.id, LG.CREATING, intent_at=int(time.time()))
        st.fresh.add(u.id)
        await create(ctx, st, replace(u, state=LG.CREATING, intent_at=int(time.time())))
        return True
    if state == LG.CREATING:
        await create(ctx, st, u)
        return True
    return False


def filename(ctx: RunContext, u: LG.UnitRecord) -> str:
    """The name a unit's file is uploaded under: how a crashed upload is found again."""
    return f"{ctx.job_id}.u{u.id}.jsonl"


def tag(ctx: RunContext, u: LG.UnitRecord) -> dict[str, str]:
    """The metadata a unit's batch is created with: how a crashed create is found again (one per try)."""
    return {
        "coldbatch_job": ctx.job_id,
        "coldbatch_unit": str(u.id),
        "coldbatch_try": str(u.try_),
        "coldbatch_round": str(u.round),
        "coldbatch_sha256": u.sha256[:32],
    }


async def find_file(ctx: RunContext, u: LG.UnitRecord) -> Any:
    """The file this unit's upload made, if it reached the provider (matched by name and size)."""
    return await ctx.provider.find_file(filename(ctx, u), u.bytes, (u.intent_at or 0) - SKEW)


async def find_batch(ctx: RunContext, u: LG.UnitRecord) -> dict[str, Any] | None:
    """The batch this unit's create call made, if it reached the provider (matched by metadata tag)."""
    wanted, not_before = tag(ctx, u), (u.intent_at or 0) - SKEW
    find = getattr(ctx.provider, "find_batch", None)
    if find is not None:  # a provider without batch metadata (Anthropic) matches its own way
        return await find(u.file_id, wanted, u.requests, not_before)  # type: ignore[no-any-return]
    async for b in ctx.provider.batches_newest_first():
        if b["created_at"] < not_before:
            return None
        if (b.get("metadata") or {}) == wanted:
            return b
    return None


async def upload(ctx: RunContext, st: RunState, u: LG.UnitRecord) -> None:
    found = None
    if u.id not in st.fresh:  # a crash may have happened after the upload: look before sending again
        found = await find_file(ctx, u)
    f, found = await _post(
        ctx,
        u,
        found,
        lambda: ctx.provider.upload(Path(u.path), filename(ctx, u)),
        lambda: find_file(ctx, u),
        "file",
    )
    ctx.ledger.move_unit(u.id, LG.UPLOADED, file_id=f["id"])
    ctx.emit("uploaded", {"unit": u.id, "file_id": f["id"], "adopted": found is not None})


async def create(ctx: RunContext, st: RunState, u: LG.UnitRecord) -> None:
    found = None if u.id in st.fresh else await find_batch(ctx, u)
    endpoint, window = ctx.opts.spec["endpoint"], ctx.opts.completion_window
    b, found = await _post(
        ctx,
        u,
        found,
        lambda: ctx.provider.create_batch(u.need_file_id(), endpoint, tag(ctx, u), window),
        lambda: find_batch(ctx, u),
        "batch",
    )
    ctx.ledger.move_unit(u.id, LG.CREATED, batch_id=b["id"], batch_status=b["status"])
    ctx.emit("created", {"unit": u.id, "batch_id": b["id"], "adopted": found is not None})


async def _post(
    ctx: RunContext,
    u: LG.UnitRecord,
    found: Any,
    send: Callable[[], Awaitable[Any]],
    find: Callable[[], Awaitable[Any]],
    what: str,
) -> tuple[Any, Any]:
    """(object, the one found instead of sent): `send()` unless `found`; after a `Retryable` failure `find()`
    first (the call may have reached the provider). Waits follow the one retry policy (hotpath.limits)."""
    attempt = 0
    while found is None:
        attempt += 1
        try:
            return await send(), None
        except Retryable as exc:
            wait = LM.decide(POST_RETRY, attempt, None, random)  # no answer: worth another send
            if wait is None:
                raise
            logger.warning("unit %s: %s; looking for the %s before sending it again", u.id, exc, what)
            await ctx.sleep(wait)
            found = await find()
    return found, found
