"""Deadline rescue (`coldbatch run --deadline`): when the batches cannot finish in time at the pace they
are observed to go, cancel them (keeping what they finished) and send the unfinished requests through
the synchronous API.

The decision (`late`): the pace is requests finished per second since the first batch was created; the
job is late when the remaining requests at that pace need more than 75 % of the time left (the other
quarter is for the sync path), or when nothing has finished after a fifth of the time to the deadline.
The rescue sends every request that has no answer yet, right away, without waiting for the cancelled
batches (a cancel can take minutes); answers the cancelled batches did finish are still collected
later and never overwrite a sync answer (the ledger keeps the first success). A request answered by
both is paid twice: the price of meeting the deadline, counted in the report.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from coldbatch.errors import UsageError
from coldbatch.protocol import limits as L
from coldbatch.runner import ledger as LG
from coldbatch.runner.requests import job_requests

if TYPE_CHECKING:
    from coldbatch.hotpath.client import SyncClient

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SYNC_SHARE = 0.25  #: of the time left when the rescue starts, kept for the sync path
SILENT_SHARE = 0.2  #: nothing finished after this share of the time to the deadline: late


def parse_deadline(value: str, now: float | None = None) -> float:
    """`90s`, `30m`, `2h`, `1d` from now, or an ISO 8601 timestamp → unix time."""
    now = time.time() if now is None else now
    m = _DURATION.match(value.strip())
    if m:
        return now + float(m.group(1)) * _UNIT[m.group(2)]
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise UsageError(f"--deadline {value!r}: use a duration (90s, 30m, 2h) or an ISO 8601 time") from exc
    if ts.tzinfo is None:
        ts = ts.astimezone()
    return ts.timestamp()


def late(*, now: float, deadline: float, started: float, done: int, remaining: int) -> bool:
    """Will the batches miss the deadline at the observed pace?"""
    if remaining <= 0:
        return False
    left = deadline - now
    if left <= 0:
        return True
    if done == 0:
        return now - started >= SILENT_SHARE * (deadline - started)
    pace = done / max(now - started, 1e-6)
    return remaining / pace > (1 - SYNC_SHARE) * left


def unanswered_requests(ledger: LG.LedgerStore, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(custom_id, url, body) of every request of the job without a success, from its round-1 files."""
    answered = {r["custom_id"] for r in ledger.iter_results(job_id) if r["state"] == "ok"}
    out, seen = [], set()
    for _, req in job_requests(ledger, job_id):
        cid = req.custom_id
        if cid not in answered and cid not in seen:
            seen.add(cid)
            out.append((cid, req.url or L.CHAT, req.body))
    return out


async def rescue(
    ledger: LG.LedgerStore,
    job_id: str,
    client: SyncClient,
    *,
    attempt: int,
    labels: tuple[str, frozenset[str]] | None = None,
) -> int:
    """Send every unanswered request through `client`; record answers as they arrive. Returns how many.
    `labels`: a label job's (field, labels), whose answers get a confidence (`outcomes.answered`)."""
    from coldbatch.runner.sync_mode import outcome_of

    todo = unanswered_requests(ledger, job_id)
    pending: list[LG.Outcome] = []

    urls = {cid: url for cid, url, _ in todo}

    def arrived(cid: str, res: Any) -> None:
        pending.append(outcome_of(cid, urls[cid], res, labels))
        if len(pending) >= 200:
            flush()

    def flush() -> None:
        if pending:
            ledger.record_results(job_id, list(pending), attempts=attempt)
            ledger.add_rescued(job_id, [o.custom_id for o in pending])
            pending.clear()

    await client.run_many(((cid, url, body) for cid, url, body in todo), arrived)
    flush()
    return len(todo)
