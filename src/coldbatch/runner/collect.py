"""The poll and collect phases: a running batch's status, and its results into the ledger once it ends.

A batch that ended is collected in one ledger transaction (every row's outcome, and the unit `collected`
or `failed`), so a crash leaves it either running (polled and collected again) or collected, never half.
Only then are its remote files deleted: a crash between the two is swept up by `sweep_remote` on the next
run (`mark_cleaned` records what is done). A batch the provider refused for its enqueued-token quota is
requeued (the same file, a new try) instead of failing its rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from coldbatch import _gc
from coldbatch.core.canonical import KEY_PREFIX
from coldbatch.jsonl import request_lines
from coldbatch.protocol.lines import custom_id_of
from coldbatch.runner import ledger as LG
from coldbatch.runner import structured
from coldbatch.runner.cache import Entry
from coldbatch.runner.context import CANCELLED, TERMINAL, RunContext, RunState
from coldbatch.runner.outcomes import read_errors, read_output
from coldbatch.runner.prepare import dedup_and_cache, open_cache

logger = logging.getLogger(__name__)

#: a batch refused for the provider's enqueued-token quota is sent again at most this often, then reported
MAX_REQUEUES = 20


async def poll(ctx: RunContext, st: RunState, u: LG.UnitRecord, b: dict[str, Any] | None = None) -> bool:
    """Record a running unit's batch status (`b`: already retrieved) and collect it if it ended; True if it
    changed."""
    if b is None:
        b = await ctx.provider.retrieve(u.need_batch_id())
    status = b["status"]
    counts = b.get("request_counts") or {}
    finished = int(counts.get("completed", 0) or 0) + int(counts.get("failed", 0) or 0)
    st.moving |= finished > st.counts.get(u.id, 0)
    st.counts[u.id] = finished
    if status != u.batch_status:
        ctx.ledger.set_batch_status(u.id, status)
        ctx.emit(
            "status",
            {"unit": u.id, "batch_id": u.batch_id, "status": status, "counts": b.get("request_counts")},
        )
    if status not in TERMINAL:
        return bool(status != u.batch_status)
    if status == "failed":
        await failed_batch(ctx, st, u, b)
    else:
        await collect(ctx, u, b)
    return True


async def failed_batch(ctx: RunContext, st: RunState, u: LG.UnitRecord, b: dict[str, Any]) -> None:
    """A batch that failed as a whole: requeued if the provider's queue was full, else every row failed."""
    errors = ((b.get("errors") or {}).get("data")) or []
    if any(e.get("code") == "token_limit_exceeded" for e in errors) and u.try_ < MAX_REQUEUES:
        # the provider's queue is full: send the same file again later, as a new try (a new tag); the
        # failed batch stays on the provider's list under the old try's tag, so reconciliation never adopts it
        ctx.ledger.move_unit(u.id, LG.UPLOADED, batch_id=None, batch_status=None, **{"try": u.try_ + 1})
        wait = min(ctx.opts.poll_interval * 2 ** min(u.try_, 6), max(ctx.opts.max_poll_interval, 1.0))
        st.not_before[u.id] = time.monotonic() + wait
        ctx.emit("requeued", {"unit": u.id, "reason": "token_limit_exceeded", "try": u.try_ + 1})
        return
    by_line = {e.get("line"): e for e in errors if e.get("line")}
    first = errors[0] if errors else {"code": "batch_failed", "message": "the batch failed"}
    outcomes = []
    for n, line in request_lines(Path(u.path)):
        e = by_line.get(n, first)
        outcomes.append(LG.Outcome(custom_id_of(line), "failed", None, e.get("code"), e.get("message")))
    ctx.ledger.collect(
        u,
        outcomes,
        state=LG.FAILED,
        batch_status="failed",
        output_file_id=b.get("output_file_id"),
        error_file_id=b.get("error_file_id"),
        detail=orjson.dumps(errors[:20]).decode(),
    )
    ctx.emit("failed", {"unit": u.id, "batch_id": u.batch_id, "errors": errors[:3]})
    await clean_remote(ctx, u, b)


async def collect(ctx: RunContext, u: LG.UnitRecord, b: dict[str, Any]) -> None:
    """Download a finished (or cancelled, or expired) batch's output and error files and record every row."""
    folder = ctx.folder / "results"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for kind, fid in (("output", b.get("output_file_id")), ("error", b.get("error_file_id"))):
        if fid:
            dest = folder / f"u{u.id}.{kind}.jsonl"
            await ctx.provider.download(fid, dest)
            files.append((kind, dest))
    with _gc.paused():  # one pass over up to 50,000 results: millions of short-lived objects, no cycles
        counts = _record_collected(ctx, u, b, files)
    ctx.emit("collected", {"unit": u.id, "batch_id": u.batch_id, "status": b["status"], **counts})
    await clean_remote(ctx, u, b)


def _record_collected(
    ctx: RunContext, u: LG.UnitRecord, b: dict[str, Any], files: list[tuple[str, Path]]
) -> dict[str, int]:
    """Each of the unit's requests gets an outcome: its result line, or `missing_result` (retried) when the
    provider returned none, or `batch_cancelled` when the user cancelled the batch."""
    cancelled_by_user = ctx.status() in CANCELLED
    expected = [custom_id_of(ln) for _, ln in request_lines(Path(u.path))]
    outcomes = _read_results(ctx, u, files, cancelled_by_user)
    for cid in expected:
        if cid not in outcomes:
            outcomes[cid] = (
                LG.Outcome(cid, "failed", None, "batch_cancelled", "cancelled by the user")
                if cancelled_by_user and b["status"] == "cancelled"
                else LG.Outcome(cid, "retry", None, "missing_result", "the provider returned no result")
            )
    wanted = set(expected)
    # in key order: question keys are random hashes, and B-tree upserts in order touch each page once instead
    # of all over the ledger's and the cache's tables (measured: ~3x less CPU per 50,000 at a million entries)
    ordered = [o for cid, o in sorted(outcomes.items()) if cid in wanted]
    counts = ctx.ledger.collect(
        u,
        ordered,
        batch_status=b["status"],
        output_file_id=b.get("output_file_id"),
        error_file_id=b.get("error_file_id"),
    )
    remember(ctx, ordered)
    return counts


def _read_results(
    ctx: RunContext, u: LG.UnitRecord, files: list[tuple[str, Path]], cancelled_by_user: bool
) -> dict[str, LG.Outcome]:
    """The outcomes in a batch's output and error files, by custom_id, each checked against the answer schema."""
    endpoint = ctx.opts.spec["endpoint"]
    schema = ctx.opts.request_spec().answer_schema
    labels = structured.label_field(schema)
    outcomes: dict[str, LG.Outcome] = {}
    for kind, dest in files:
        items = (
            read_output(dest, endpoint, cancelled_by_user=cancelled_by_user, labels=labels)
            if kind == "output"
            else read_errors(dest, cancelled_by_user=cancelled_by_user)
        )
        for o in items:
            outcomes[o.custom_id] = structured.check(
                o, schema, attempt=u.round, retries=ctx.opts.invalid_output_retries
            )
    return outcomes


def remember(ctx: RunContext, outcomes: Iterable[LG.Outcome]) -> None:
    """Cache answers that were collected and are valid (a label when --labels was used), by question key."""
    dedup, use_cache = dedup_and_cache(ctx.opts)
    if not (dedup and use_cache) or ctx.opts.cache_only:
        return
    entries = [
        Entry(o.custom_id, o.content, o.prompt_tokens, o.completion_tokens, o.confidence)
        for o in outcomes
        if o.state == "ok" and o.content is not None and o.custom_id.startswith(KEY_PREFIX)
    ]
    # (answers that miss the labels/schema were turned into invalid_output by structured.check already)
    if entries:
        cache = open_cache(ctx)
        try:
            cache.put_many(entries)
            cache.prune()
        finally:
            cache.close()


async def clean_remote(ctx: RunContext, u: LG.UnitRecord, b: dict[str, Any]) -> None:
    """Delete a collected unit's files on the provider (unless --keep-remote-files); never fails the job."""
    if ctx.opts.keep_remote_files:
        return
    ok = True
    for fid in dict.fromkeys((u.file_id, b.get("output_file_id"), b.get("error_file_id"))):
        if fid:
            try:
                await ctx.provider.delete_file(fid)
            except Exception as exc:  # housekeeping must never fail a job
                logger.warning("could not delete remote file %s: %s", fid, exc)
                ok = False
    if ok:
        ctx.ledger.mark_cleaned(u.id)


async def sweep_remote(ctx: RunContext) -> None:
    """Delete what a crash (between collection and cleanup) or a cancel left on the provider."""
    if ctx.opts.keep_remote_files:
        return
    for u in ctx.ledger.units(ctx.job_id, [LG.COLLECTED, LG.FAILED]):
        if not u.remote_cleaned:
            await clean_remote(ctx, u, {"output_file_id": u.output_file_id, "error_file_id": u.error_file_id})
