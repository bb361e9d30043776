"""The retry phase: rows that failed transiently go into a new round of units, until `max_attempts` rounds.

Idempotent: a crash after writing a round's files but before `add_units` commits just writes them again
(the same rows in the same order: the same bytes), and `add_units` ignores a (round, shard) the ledger
holds already. A cancelled or rescued job gets no new round: its transient failures are final.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from coldbatch.builder.write import LineShards
from coldbatch.runner.context import WINDING_DOWN, RunContext
from coldbatch.runner.prepare import tokens_of
from coldbatch.runner.requests import job_requests

logger = logging.getLogger(__name__)


def plan_retry_round(ctx: RunContext) -> bool:
    """Put transiently failed rows into new units (a new round); False when there is nothing (more) to retry."""
    ids = ctx.ledger.retry_ids(ctx.job_id)
    if not ids:
        return False
    rnd = ctx.ledger.max_round(ctx.job_id) + 1
    if rnd > ctx.opts.max_attempts or ctx.status() in WINDING_DOWN:
        ctx.ledger.give_up(ctx.job_id, ids)
        return False
    folder = ctx.folder / "retries"
    folder.mkdir(parents=True, exist_ok=True)
    left = set(ids)
    units = _write_retry_files(ctx, folder, left, rnd)
    if left:  # not in any shard (cannot happen unless the job folder was altered): report, never loop
        logger.warning("%d row(s) to retry are in no shard of job %s", len(left), ctx.job_id)
        ctx.ledger.give_up(ctx.job_id, left)
    if not units:
        return False
    for unit in units:
        unit["tokens"] = tokens_of(ctx, Path(unit["path"]))
    ctx.ledger.add_units(ctx.job_id, units)
    ctx.emit("retry_round", {"round": rnd, "requests": len(ids), "units": len(units)})
    return True


def _round_units(folder: Path, rnd: int, files: LineShards) -> list[dict[str, Any]]:
    """The ledger units of one round's files (`round-R-NNNNN.jsonl`)."""
    return [
        {
            "round": rnd,
            "shard": n,
            "path": str(folder / s.path),
            "requests": s.requests,
            "bytes": s.bytes,
            "model": s.model,
            "sha256": s.sha256,
        }
        for n, s in enumerate(files.close(), 1)
    ]


def _write_retry_files(ctx: RunContext, folder: Path, ids: set[str], rnd: int) -> list[dict[str, Any]]:
    """The rows to retry, in input order, cut into files within the job's limits (requests, bytes, one model).
    Each row found is taken out of `ids`: what is left was in no shard."""
    lim = ctx.opts.limits
    files = LineShards(folder, f"round-{rnd}-{{:05d}}.jsonl", lim.max_requests, lim.max_bytes)
    try:
        for line, req in job_requests(ctx.ledger, ctx.job_id):
            if req.custom_id not in ids:
                continue
            files.add(line + b"\n", str(req.body.get("model", "")))
            ids.discard(req.custom_id)  # a row is retried once per round, even if its id repeats
    finally:
        files.close()
    return _round_units(folder, rnd, files)
