"""The prepare phase: shards, units and the estimate of a job, written once, before anything is sent.

Idempotent: the shards' manifest is the mark that they are complete, and units are added all or none
(`add_units` ignores a (round, shard) the ledger holds), so a crash anywhere here is resumed by running it
again. The job then moves `preparing → prepared` with its estimate; a job already past that returns the
stored estimate untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coldbatch.builder.api import prepare as prepare_input
from coldbatch.builder.manifest import read_manifest
from coldbatch.core.canonical import is_sampling
from coldbatch.errors import BudgetExceeded, InputError, UsageError
from coldbatch.estimate.api import estimate
from coldbatch.runner.cache import ResultCache
from coldbatch.runner.context import RunContext
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.options import RunOptions
from coldbatch.runner.plan import plan_sends
from coldbatch.store.interfaces import CacheStore
from coldbatch.store.records import JobRecord


def prepare(ctx: RunContext) -> JobEstimate:
    """Build shards and units (idempotent), and estimate the cost. Returns the estimate."""
    job = ctx.job()
    if job.status == "failed":
        raise InputError(
            f"Job {ctx.job_id} failed before anything was sent: {(job.report or {}).get('error')}"
            "; fix that and start a new `coldbatch run` (resuming would fail the same way)"
        )
    if job.status == "preparing":
        shards = ctx.folder / "shards"
        manifest = read_manifest(shards) if shards.is_dir() else None
        if manifest is None:
            manifest = _build_shards(ctx, job, shards)
        est = _plan_units(ctx, manifest, [shards / s["path"] for s in manifest["shards"]])
        est["manifest_totals"] = manifest["totals"]
        ctx.ledger.set_job(ctx.job_id, status="prepared", estimate=est)
        ctx.emit("prepared", est)
    return JobEstimate.of(ctx.job().estimate)


def _plan_units(ctx: RunContext, manifest: dict[str, Any], shard_paths: list[Path]) -> dict[str, Any]:
    """The round-1 units (unless a previous try planned them) and the estimate: with dedup one pass over the
    shards does both (`plan_sends` writes the deduplicated send files); without it each shard is a unit."""
    dedup, use_cache = dedup_and_cache(ctx.opts)
    cache = open_cache(ctx) if use_cache else None
    planned = bool(ctx.ledger.units(ctx.job_id))
    if dedup and not planned:
        units, stats, found = plan_sends(
            shard_paths,
            ctx.folder / "send",
            ctx.ledger,
            ctx.job_id,
            limits=ctx.opts.limits,
            cache=cache,
            cache_only=ctx.opts.cache_only,
            prices=ctx.prices,
        )
        est = found.to_json()
        est["plan"] = stats.to_json()
        ctx.ledger.add_units(ctx.job_id, units)
    else:
        est = estimate(shard_paths, prices=ctx.prices, dedup=dedup, cache=cache).to_json()
    if not dedup and not planned:
        ctx.ledger.add_units(ctx.job_id, _shard_units(ctx, manifest, shard_paths))
    est["dedup"], est["cache"] = dedup, use_cache
    return est


def _shard_units(ctx: RunContext, manifest: dict[str, Any], shard_paths: list[Path]) -> list[dict[str, Any]]:
    """One round-1 unit per shard, as the manifest describes it."""
    return [
        {
            "round": 1,
            "shard": i,
            "path": str(p),
            "requests": s["requests"],
            "bytes": s["bytes"],
            "sha256": s["sha256"],
            "model": s["model"],
            "tokens": tokens_of(ctx, p),
        }
        for i, (p, s) in enumerate(zip(shard_paths, manifest["shards"], strict=True), 1)
    ]


def _build_shards(ctx: RunContext, job: JobRecord, shards: Path) -> dict[str, Any]:
    """`prepare` the input. An input it refuses fails the job, with the reason: left `preparing`, the job
    invited a `resume` that could only fail again."""
    try:
        return prepare_input(
            job.input_path,
            shards,
            ctx.opts.request_spec(),
            limits=ctx.opts.limits,
            fmt=ctx.opts.fmt,
        ).manifest
    except (InputError, UsageError) as exc:
        ctx.ledger.set_job(ctx.job_id, status="failed", report={"error": str(exc)})
        raise


def dedup_and_cache(opts: RunOptions) -> tuple[bool, bool]:
    """Dedup and cache default to on, and to off for sampling requests (independent answers wanted)."""
    spec = opts.request_spec()
    sampling = is_sampling({"temperature": spec.temperature, **spec.body})
    dedup = opts.dedup if opts.dedup is not None else not sampling
    use_cache = dedup and (opts.cache if opts.cache is not None else not sampling)
    return dedup, use_cache or opts.cache_only


def open_cache(ctx: RunContext) -> CacheStore:
    return ResultCache(
        ctx.root / "cache.sqlite3",
        max_entries=ctx.opts.cache_max_entries,
        max_age_days=ctx.opts.cache_max_age_days,
    )


def tokens_of(ctx: RunContext, path: Path) -> int:
    """Prompt tokens of one request file, for --max-enqueued-tokens (0, and no work, without that cap)."""
    if ctx.opts.max_enqueued_tokens is None:
        return 0
    return int(estimate([path], prices=ctx.prices).to_json()["totals"].get("input_tokens") or 0)


def check_budget(opts: RunOptions, est: JobEstimate) -> None:
    """Refuse, before anything is sent, a job whose estimated cost exceeds --max-cost or cannot be known."""
    cap = opts.max_cost
    if opts.provider == "embedded":
        return  # the embedded server runs on this machine: nothing is paid per token, whatever the model
    cost = est.cost_to_send_usd  # what will actually be sent
    s, b = est.sync_cost_usd, est.batch_cost_usd
    if opts.mode == "sync" and cost is not None and s and b:  # sync prices: scale by their ratio
        cost = cost * s / b
    if cap is not None and cost is None:
        raise BudgetExceeded(
            f"--max-cost ${cap:,.4f} was given but the price of {opts.spec['model']!r} "
            "is unknown, so the cost cannot be checked; nothing was sent. Add the model to the "
            "price table or drop --max-cost."
        )
    if cap is not None and cost is not None and cost > cap:
        raise BudgetExceeded(
            f"The estimated batch cost ${cost:,.4f} exceeds --max-cost ${cap:,.4f}; nothing was "
            "sent. Raise --max-cost or reduce max_tokens."
        )
