"""Sync mode (`coldbatch run --mode sync`) and the router that picks a job's mode (`--mode auto`).

`SyncMode` sends the job's prepared request lines (the round-1 units `prepare.prepare` planned: the
deduplicated `send/` files, or the shards) one by one to the provider's synchronous endpoint through
`hotpath.SyncClient` (RPM/TPM pacing, learned limits, Retry-After, backoff with jitter, bounded
attempts), instead of uploading them as batches.

Durability is the ledger's, as in batch mode: every answer is upserted into the `results` table as it
arrives, in group commits (every `flush_every` seconds or `flush_size` results). A kill loses at most
the answers not yet committed; `resume` skips every custom_id that already has a final result (ok or
failed) and sends only the rest. Answers are classified like batch results (`outcomes.classify`);
a failure still transient after the client's own retries is final (`failed`, with its code). When
every line has been sent, the units are marked collected (batch mode never sends them) and OUTPUT and
the report are written by `report.finish`, exactly as for a batch job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from coldbatch.protocol.lines import OutputLine, Result
from coldbatch.runner import ledger as LG
from coldbatch.runner import structured
from coldbatch.runner.collect import remember
from coldbatch.runner.context import CANCELLED, RunContext, RunState
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.outcomes import answered, classify
from coldbatch.runner.report import JobReport, finish, progress
from coldbatch.runner.requests import unit_requests

if TYPE_CHECKING:  # the client (httpx) loads when a sync run makes one, not when a batch run imports this
    from coldbatch.hotpath.client import Item, SyncClient

#: `--mode auto` sends at most this many requests (after dedup and cache) synchronously, more as batches.
#: Below it, a batch's latency (minutes to hours) buys little: its 50 % discount on a job this small is cents,
#: while sync mode answers within the rate limits in seconds to minutes.
SYNC_THRESHOLD = 1000
MODES = ("auto", "sync", "batch")


def route(est: JobEstimate, threshold: int = SYNC_THRESHOLD) -> dict[str, Any]:
    """Sync or batch for a prepared job, and why (stored in the job's estimate and report)."""
    n = est.requests_to_send
    if n <= threshold:
        mode = "sync"
        reason = (
            f"{n:,} request(s) to send <= --sync-threshold {threshold:,}: sync answers in seconds to minutes; "
            "a batch's minutes-to-hours latency is not worth its 50% discount on a job this small"
        )
    else:
        mode = "batch"
        reason = (
            f"{n:,} requests to send > --sync-threshold {threshold:,}: batch halves the cost of a job this "
            "large and needs no rate-limit budget"
        )
    return {"mode": mode, "reason": reason, "requests_to_send": n, "threshold": threshold}


def outcome_of(
    custom_id: str, endpoint: str, res: Result, labels: tuple[str, frozenset[str]] | None = None
) -> LG.Outcome:
    """One sync answer as a ledger Outcome, classified like a batch result line; transient failures are final
    here (the client already retried them). `labels`: see `outcomes.answered`."""
    if res.ok:
        return answered(custom_id, endpoint, res.body, labels)
    o = classify(OutputLine(custom_id, res.status_code, res.body), cancelled_by_user=False)
    if o.state == "retry":
        o.state = "failed"
    return o


class SyncMode:
    """The job's round 1 goes through a `SyncClient` (opened by `make_client`, closed when the run ends);
    see the module docstring. A value object: the state of one run lives in a `_SyncRun`."""

    def __init__(self, make_client: Callable[[], SyncClient], flush_every: float = 0.2, flush_size: int = 200) -> None:
        self.make_client, self.flush_every, self.flush_size = make_client, flush_every, flush_size

    async def run(self, ctx: RunContext, st: RunState) -> JobReport:
        started = time.time()
        client = self.make_client()
        try:
            go = _SyncRun(ctx, st, self.flush_every, self.flush_size)
            await go.send(client)
        finally:
            await client.aclose()
        return await finish(ctx, started)


class _SyncRun:
    """One run of sync mode: answers arrive, are committed in groups, and a cancel stops the sending."""

    def __init__(self, ctx: RunContext, st: RunState, flush_every: float, flush_size: int) -> None:
        self.ctx, self.st = ctx, st
        self.flush_every, self.flush_size = flush_every, flush_size
        self._pending: list[LG.Outcome] = []
        self._stop = False
        self.sent = 0

    async def send(self, client: SyncClient) -> None:
        """Send every unanswered request of the round-1 units, then mark the units (sent, or cancelled)."""
        ctx = self.ctx
        if ctx.status() not in CANCELLED:
            ctx.ledger.set_job(ctx.job_id, status="running")
        else:
            self._stop = True
        units = [u for u in ctx.ledger.units(ctx.job_id, [LG.PLANNED]) if u.round == 1]
        endpoint = ctx.opts.spec["endpoint"]
        labels = structured.label_field(ctx.opts.request_spec().answer_schema)
        ticker = asyncio.create_task(self._tick())
        try:
            await client.run_many(
                self._items(units, endpoint), lambda cid, res: self._arrived(outcome_of(cid, endpoint, res, labels))
            )
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._flush()
        for u in units:  # everything is answered (or the job was cancelled): batch mode must never send these
            if self._stop:
                ctx.ledger.move_unit(u.id, LG.FAILED, detail="cancelled before submission", remote_cleaned=1)
            else:
                ctx.ledger.move_unit(u.id, LG.COLLECTED, remote_cleaned=1, detail="sent in sync mode")

    def _items(self, units: list[LG.UnitRecord], endpoint: str) -> Iterator[Item]:
        seen = self.ctx.ledger.answered_ids(self.ctx.job_id)
        for _, req in unit_requests(units):
            if self._stop:
                return
            cid = req.custom_id
            if cid in seen:  # answered before a crash, or a repeated id (sent once, like a batch retry)
                continue
            seen.add(cid)
            self.sent += 1
            yield cid, req.url or endpoint, req.body

    def _arrived(self, outcome: LG.Outcome) -> None:
        self._pending.append(outcome)
        if len(self._pending) >= self.flush_size:
            self._flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            self._flush()

    def _flush(self) -> None:
        """Commit the answers that arrived (one transaction), cache them, and notice a cancel."""
        ctx = self.ctx
        if self._pending:
            batch, self._pending = self._pending, []
            ctx.ledger.record_results(ctx.job_id, batch)
            remember(ctx, batch)
            ctx.emit("progress", progress(ctx, self.st))
        if ctx.status() in CANCELLED:
            self._stop = True
