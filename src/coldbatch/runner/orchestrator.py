"""`Runner`: drives one job through the ledger until every row has a final answer.

Each pass over the job's open units does at most one remote step per unit and commits it, so the
job can be killed at any instant and resumed: see `ledger.py` for the intent/confirm protocol. Rows
that failed transiently are collected into a follow-up unit (a new round) until `max_attempts`.

The two calls that create billable objects (upload, batch create) are never retried blindly: when
one fails in a way that may have reached the provider (`Retryable`), the runner looks for the object
by its tag first, exactly as after a crash, and only then sends the call again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from coldbatch import _gc
from coldbatch.builder.api import prepare
from coldbatch.builder.manifest import read_manifest
from coldbatch.builder.spec import RequestSpec
from coldbatch.core.canonical import KEY_PREFIX, is_sampling
from coldbatch.core.status import TERMINAL as BATCH_TERMINAL
from coldbatch.errors import BudgetExceeded, InputError, UsageError
from coldbatch.estimate import prices as P
from coldbatch.estimate.api import estimate
from coldbatch.hotpath import limits as LM
from coldbatch.jsonl import request_lines
from coldbatch.protocol.limits import Limits
from coldbatch.protocol.lines import custom_id_of
from coldbatch.providers.base import BatchProvider, Retryable
from coldbatch.runner import deadline, examples, structured
from coldbatch.runner import ledger as LG
from coldbatch.runner.cache import Entry, ResultCache
from coldbatch.runner.outcomes import read_errors, read_output
from coldbatch.runner.output import write_output
from coldbatch.runner.plan import plan_sends
from coldbatch.runner.requests import job_requests
from coldbatch.store.interfaces import CacheStore

logger = logging.getLogger(__name__)

POLL_CONCURRENCY = 16  #: status requests in flight at once while polling running batches
TERMINAL = BATCH_TERMINAL  #: batch statuses after which nothing changes (core/status.py spells them)
#: job statuses after a user's cancel: nothing new is sent, whatever runs is cancelled, the rest is reported
CANCELLED = ("cancelling", "cancelled")
#: sends of one upload / create call after a `Retryable` failure (each preceded by a reconciliation), waits of
#: up to 2, 4, 8, 16 s (full jitter)
POST_ATTEMPTS, POST_RETRY = 5, LM.RetryPolicy(max_attempts=5, base=2.0, cap=30.0)
#: a batch refused for the provider's enqueued-token quota is sent again at most this often, then reported
MAX_REQUEUES = 20
Events = Callable[[str, dict[str, Any]], None]


@dataclass
class RunOptions:
    """Everything a job needs besides its input, stored in the ledger so `resume` needs nothing else."""

    spec: dict[str, Any]
    limits: dict[str, int] = field(default_factory=lambda: asdict(Limits()))
    fmt: str | None = None
    max_cost: float | None = None
    max_attempts: int = 3
    max_in_flight: int = 50
    max_enqueued_tokens: int | None = None
    completion_window: str = "24h"
    keep_remote_files: bool = False
    poll_interval: float = 5.0
    max_poll_interval: float = 60.0
    provider: str = "embedded"
    provider_kind: str = "openai"  #: openai | azure | anthropic | gemini: the adapter (providers/kinds.py)
    dedup: bool | None = None  #: None = on, except for sampling requests (temperature/top_p > 0, n > 1)
    cache: bool | None = None  #: None = on, except for sampling requests
    cache_only: bool = False  #: answer only from the cache; never send (never spend)
    cache_max_entries: int | None = None
    cache_max_age_days: float | None = None
    mode: str = "batch"  #: batch | sync | auto (auto is resolved to batch or sync after prepare; see sync_mode.route)
    rpm: float | None = None  #: sync mode: requests per `rate_window` (None: learn from x-ratelimit-* headers)
    tpm: float | None = None  #: sync mode: tokens per `rate_window`
    rate_window: float = 60.0  #: sync mode: the budgets' window in seconds (a minute; tests scale it down)
    request_timeout: float = 600.0  #: sync mode: seconds per attempt
    concurrency: int = 64  #: sync mode: requests in flight at most
    sync_threshold: int = 1000  #: auto mode: sync when at most this many requests are to be sent
    invalid_output_retries: int = 1  #: an answer that misses the labels/schema is asked again this often
    deadline: float | None = None  #: unix time; late batches are cancelled and the rest sent sync (deadline.py)
    sync_base_url: str | None = None  #: where sync mode and a deadline rescue send (default: the provider)
    #: --examples: the job's requests are the rows' embeddings, labelled by a classifier fitted on the examples
    #: (runner/examples.py): {"labels", "file" (the kept examples), "source", "label_column"}
    examples: dict[str, Any] | None = None
    output_prefix: str = ""  #: before every column OUTPUT adds (--output-prefix; runner/output.py)

    def request_spec(self) -> RequestSpec:
        d = dict(self.spec)
        d["labels"] = tuple(d.get("labels") or ())
        return RequestSpec(**d)


def new_job_id(name: str | None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{name or 'job'}-{stamp}-{secrets.token_hex(2)}"


def write_job_output(
    ledger: LG.LedgerStore, job: dict[str, Any], root: Path, out: Path | None = None
) -> dict[str, int]:
    """(Re)write a job's OUTPUT from the ledger: joined with the same request options and limits the job
    prepared with, after checking that the input still builds exactly the requests that were sent."""
    opts = RunOptions(**job["options"])
    lim = Limits(**opts.limits)
    manifest = read_manifest(root / "jobs" / job["id"] / "shards")
    classified = examples.classified(ledger, job["id"], opts.examples) if opts.examples else None
    return write_output(
        ledger,
        job["id"],
        Path(job["input_path"]),
        out or Path(job["output_path"]),
        opts.request_spec(),
        fmt=opts.fmt,
        max_line_bytes=min(lim.max_line_bytes, lim.max_bytes - 1),
        shards=manifest["shards"] if manifest else None,
        classified=classified,
        prefix=opts.output_prefix,
    )


class Runner:
    def __init__(
        self,
        ledger: LG.LedgerStore,
        provider: BatchProvider,
        job_id: str,
        root: Path,
        *,
        on_event: Events | None = None,
        prices: P.PriceTable | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.ledger, self.provider, self.job_id, self.root = ledger, provider, job_id, root
        job = ledger.job(job_id)
        if job is None:
            raise InputError(f"No job {job_id!r} in the ledger {ledger.path}")
        self.job = job
        self.opts = RunOptions(**job["options"])
        self.emit = on_event or (lambda kind, data: None)
        self.prices = prices or P.load()
        self.sleep = sleep
        self._fresh: set[int] = set()  # units whose intent this process wrote (no reconciliation needed)
        self._not_before: dict[int, float] = {}  # requeued units wait until then (token quota)
        self._cancel_sent: set[int] = set()  # units whose batch this process asked the provider to cancel
        self.make_sync_client: Callable[[], Any] | None = None  # set by the CLI: enables a deadline rescue
        self._counts: dict[int, int] = {}  # requests finished per running unit, as last polled
        self._moving = False  # some batch's finished count grew in this pass

    @property
    def folder(self) -> Path:
        return self.root / "jobs" / self.job_id

    # -- preparation ----------------------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Build shards and units (idempotent), and estimate the cost. Returns the estimate."""
        job = self.ledger.job(self.job_id)
        assert job is not None
        if job["status"] == "failed":
            raise InputError(
                f"Job {self.job_id} failed before anything was sent: {(job['report'] or {}).get('error')}"
                "; fix that and start a new `coldbatch run` (resuming would fail the same way)"
            )
        if job["status"] == "preparing":
            shards = self.folder / "shards"
            manifest = read_manifest(shards) if shards.is_dir() else None
            if manifest is None:
                manifest = self._build_shards(job, shards)
            shard_paths = [shards / s["path"] for s in manifest["shards"]]
            dedup, use_cache = self._dedup_and_cache()
            cache = self._cache() if use_cache else None
            planned = bool(self.ledger.units(self.job_id))
            if dedup and not planned:  # one pass estimates and writes the send plan
                units, stats, found = plan_sends(
                    shard_paths,
                    self.folder / "send",
                    self.ledger,
                    self.job_id,
                    limits=Limits(**self.opts.limits),
                    cache=cache,
                    cache_only=self.opts.cache_only,
                    prices=self.prices,
                )
                est = found.to_json()
                est["plan"] = stats.to_json()
                self.ledger.add_units(self.job_id, units)
            else:
                est = estimate(shard_paths, prices=self.prices, dedup=dedup, cache=cache).to_json()
            if not dedup and not planned:
                units = [
                    {
                        "round": 1,
                        "shard": i,
                        "path": str(p),
                        "requests": s["requests"],
                        "bytes": s["bytes"],
                        "sha256": s["sha256"],
                        "model": s["model"],
                    }
                    for i, (p, s) in enumerate(zip(shard_paths, manifest["shards"], strict=True), 1)
                ]
                for u in units:
                    u["tokens"] = self._tokens_of(Path(u["path"]))
                self.ledger.add_units(self.job_id, units)
            est["dedup"], est["cache"] = dedup, use_cache
            est["manifest_totals"] = manifest["totals"]
            self.ledger.set_job(self.job_id, status="prepared", estimate=est)
            self.emit("prepared", est)
        job = self.ledger.job(self.job_id)
        assert job is not None
        return dict(job["estimate"] or {})

    def _build_shards(self, job: dict[str, Any], shards: Path) -> dict[str, Any]:
        """`prepare` the input. An input it refuses fails the job, with the reason: left `preparing`, the job
        invited a `resume` that could only fail again."""
        try:
            return prepare(
                job["input_path"],
                shards,
                self.opts.request_spec(),
                limits=Limits(**self.opts.limits),
                fmt=self.opts.fmt,
            ).manifest
        except (InputError, UsageError) as exc:
            self.ledger.set_job(self.job_id, status="failed", report={"error": str(exc)})
            raise

    def _dedup_and_cache(self) -> tuple[bool, bool]:
        """Dedup and cache default to on, and to off for sampling requests (independent answers wanted)."""
        spec = self.opts.request_spec()
        sampling = is_sampling({"temperature": spec.temperature, **spec.body})
        dedup = self.opts.dedup if self.opts.dedup is not None else not sampling
        use_cache = dedup and (self.opts.cache if self.opts.cache is not None else not sampling)
        return dedup, use_cache or self.opts.cache_only

    def _cache(self) -> CacheStore:
        return ResultCache(
            self.root / "cache.sqlite3",
            max_entries=self.opts.cache_max_entries,
            max_age_days=self.opts.cache_max_age_days,
        )

    def _tokens_of(self, path: Path) -> int:
        """Prompt tokens of one request file, for --max-enqueued-tokens (0, and no work, without that cap)."""
        if self.opts.max_enqueued_tokens is None:
            return 0
        return int(estimate([path], prices=self.prices).to_json()["totals"].get("input_tokens") or 0)

    def check_budget(self, est: dict[str, Any]) -> None:
        cap = self.opts.max_cost
        if self.opts.provider == "embedded":
            return  # the embedded server runs on this machine: nothing is paid per token, whatever the model
        totals = est.get("totals") or {}
        cost = totals.get("final_cost_usd", totals.get("batch_cost_usd"))  # what will actually be sent
        s, b = totals.get("sync_cost_usd"), totals.get("batch_cost_usd")
        if self.opts.mode == "sync" and cost is not None and s and b:  # sync prices: scale by their ratio
            cost = cost * s / b
        if cap is not None and cost is None:
            raise BudgetExceeded(
                f"--max-cost ${cap:,.4f} was given but the price of {self.opts.spec['model']!r} "
                "is unknown, so the cost cannot be checked; nothing was sent. Add the model to the "
                "price table or drop --max-cost."
            )
        if cap is not None and cost is not None and cost > cap:
            raise BudgetExceeded(
                f"The estimated batch cost ${cost:,.4f} exceeds --max-cost ${cap:,.4f}; nothing was "
                "sent. Raise --max-cost or reduce max_tokens."
            )

    # -- the loop -----------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Submit, poll, collect and retry until done; then write OUTPUT. Returns the report."""
        started = time.time()
        job = self.ledger.job(self.job_id)
        if job is not None and job["status"] not in (*CANCELLED, "rescued"):  # these survive a crash and a resume
            self.ledger.set_job(self.job_id, status="running")
        interval = min(self.opts.poll_interval, 1.0)
        while True:
            open_units = self.ledger.units(self.job_id, LG.OPEN_STATES)
            if not open_units:
                if self._plan_retry_round():
                    continue
                break
            if await self._maybe_rescue(open_units):
                continue
            if self._past_deadline_after_rescue():
                break  # rescued: what the cancelled batches still finish is collected by a later `resume`
            self._moving = False
            progressed = await self._step(open_units)
            if progressed:
                interval = min(self.opts.poll_interval, 1.0)
            else:
                await self.sleep(interval)
                # back off only while nothing moves: a batch whose counts grow finishes soon, and each
                # backed-off poll would leave its results (and the provider's next batch) waiting
                interval = (
                    self.opts.poll_interval
                    if self._moving
                    else min(interval * 1.5, max(self.opts.poll_interval, self.opts.max_poll_interval))
                )
        return await self.finish(started)

    async def _maybe_rescue(self, units: list[dict[str, Any]]) -> bool:
        """With --deadline: start the sync rescue when the batches will be late (see deadline.py)."""
        job = self.ledger.job(self.job_id)
        if self.opts.deadline is None or self.make_sync_client is None or job is None or job["status"] != "running":
            return False
        started = min((u["intent_at"] or time.time() for u in self.ledger.units(self.job_id)), default=time.time())
        remaining = sum(u["requests"] - self._counts.get(u["id"], 0) for u in units)
        done = sum(self._counts.values()) + sum(u["requests"] for u in self.ledger.units(self.job_id, [LG.COLLECTED]))
        if not deadline.late(
            now=time.time(), deadline=self.opts.deadline, started=started, done=done, remaining=remaining
        ):
            return False
        self.ledger.set_job(self.job_id, status="rescued")
        self.emit(
            "rescue", {"remaining": remaining, "done": done, "seconds_left": round(self.opts.deadline - time.time(), 1)}
        )
        client = self.make_sync_client()
        try:
            sent = await deadline.rescue(
                self.ledger,
                self.job_id,
                client,
                attempt=self.ledger.max_round(self.job_id) + 1,
                labels=structured.label_field(self.opts.request_spec().answer_schema),
            )
        finally:
            await client.aclose()
        self.emit("rescued", {"requests": sent})
        await self._step_cancelling(self.ledger.units(self.job_id, LG.OPEN_STATES))  # cancel what still runs
        return True

    def _past_deadline_after_rescue(self) -> bool:
        """After a rescue, stop waiting for the cancelled batches at the deadline, or as soon as every request
        has its final answer (they could only add duplicates)."""
        job = self.ledger.job(self.job_id)
        if not (job and job["status"] == "rescued" and self.opts.deadline):
            return False
        s = self.ledger.summary(self.job_id)
        total = sum(u["requests"] for u in self.ledger.units(self.job_id) if u["round"] == 1)
        return time.time() >= self.opts.deadline or s["succeeded"] + s["failed"] >= total

    async def _step(self, units: list[dict[str, Any]]) -> bool:
        job = self.ledger.job(self.job_id)
        if job is not None and job["status"] in (*CANCELLED, "rescued"):
            return await self._step_cancelling(units)
        progressed = False
        in_flight = sum(1 for u in units if u["state"] != LG.PLANNED)
        queued: dict[str, int] = {}  # prompt tokens in flight per model, counting units started in this pass
        for u in units:
            if u["state"] != LG.PLANNED:
                queued[u["model"]] = queued.get(u["model"], 0) + u["tokens"]
        # every running batch's status at once: one round trip per step instead of one per batch
        running = [u for u in units if u["state"] == LG.CREATED]
        gate = asyncio.Semaphore(POLL_CONCURRENCY)

        async def retrieve(batch_id: str) -> dict[str, Any]:
            async with gate:
                return await self.provider.retrieve(batch_id)

        polled = dict(
            zip(
                [u["id"] for u in running],
                await asyncio.gather(*(retrieve(u["batch_id"]) for u in running)),
                strict=True,
            )
        )
        for u in units:
            if u["state"] == LG.PLANNED:
                if in_flight >= self.opts.max_in_flight or not self._tokens_ok(u, queued):
                    continue
                in_flight += 1
                queued[u["model"]] = queued.get(u["model"], 0) + u["tokens"]
            if u["id"] in polled:
                progressed |= await self._poll(u, polled[u["id"]])
            else:
                progressed |= await self._advance(u)
        self.emit("progress", self.progress())
        return progressed

    def _tokens_ok(self, unit: dict[str, Any], queued: dict[str, int]) -> bool:
        cap = self.opts.max_enqueued_tokens
        if cap is None:
            return True
        q = queued.get(unit["model"], 0)
        return q == 0 or q + unit["tokens"] <= cap

    async def _step_cancelling(self, units: list[dict[str, Any]]) -> bool:
        """While cancelling: send nothing new, cancel what runs, collect what the provider finished.

        The cancel may have been asked by another process (`coldbatch cancel` while `run` holds the job), so
        every running batch is cancelled here too, once per process (cancelling twice is harmless).
        """
        for u in units:
            if u["state"] == LG.UPLOADING:  # the upload may have reached the provider: find it, to delete it
                found = (
                    None
                    if u["id"] in self._fresh
                    else await self.provider.find_file(self._filename(u), u["bytes"], (u["intent_at"] or 0) - 120)
                )
                self.ledger.move_unit(
                    u["id"], LG.FAILED, detail="cancelled before submission", file_id=found["id"] if found else None
                )
            elif u["state"] in (LG.PLANNED, LG.UPLOADED):
                self.ledger.move_unit(u["id"], LG.FAILED, detail="cancelled before submission")
            elif u["state"] == LG.CREATING:
                found = await self._find_batch(u)
                if found is None:
                    self.ledger.move_unit(u["id"], LG.FAILED, detail="cancelled before submission")
                else:
                    self.ledger.move_unit(u["id"], LG.CREATED, batch_id=found["id"], batch_status=found["status"])
                    await self.provider.cancel(found["id"])
                    self._cancel_sent.add(u["id"])
            else:
                if u["id"] not in self._cancel_sent and u["batch_status"] not in TERMINAL | {"cancelling"}:
                    await self.provider.cancel(u["batch_id"])
                    self._cancel_sent.add(u["id"])
                await self._poll(u)
        self.emit("progress", self.progress())
        return False

    async def _find_batch(self, u: dict[str, Any]) -> dict[str, Any] | None:
        """The batch this unit's create call made, if it reached the provider (matched by metadata tag)."""
        tag, not_before = self._tag(u), (u["intent_at"] or 0) - 120
        find = getattr(self.provider, "find_batch", None)
        if find is not None:  # a provider without batch metadata (Anthropic) matches its own way
            return await find(u["file_id"], tag, u["requests"], not_before)  # type: ignore[no-any-return]
        async for b in self.provider.batches_newest_first():
            if b["created_at"] < not_before:
                return None
            if (b.get("metadata") or {}) == tag:
                return b
        return None

    async def _advance(self, u: dict[str, Any]) -> bool:
        """At most one remote step for this unit; True if its state changed."""
        state = u["state"]
        if state == LG.PLANNED:
            self.ledger.move_unit(u["id"], LG.UPLOADING, intent_at=int(time.time()))
            self._fresh.add(u["id"])
            u = {**u, "state": LG.UPLOADING, "intent_at": int(time.time())}
            state = LG.UPLOADING
        if state == LG.UPLOADING:
            await self._upload(u)
            return True
        if state == LG.UPLOADED:
            if time.monotonic() < self._not_before.get(u["id"], 0.0):
                return False
            self.ledger.move_unit(u["id"], LG.CREATING, intent_at=int(time.time()))
            self._fresh.add(u["id"])
            await self._create({**u, "intent_at": int(time.time())})
            return True
        if state == LG.CREATING:
            await self._create(u)
            return True
        if state == LG.CREATED:
            return await self._poll(u)
        return False

    def _filename(self, u: dict[str, Any]) -> str:
        return f"{self.job_id}.u{u['id']}.jsonl"

    def _tag(self, u: dict[str, Any]) -> dict[str, str]:
        return {
            "coldbatch_job": self.job_id,
            "coldbatch_unit": str(u["id"]),
            "coldbatch_try": str(u["try"]),
            "coldbatch_round": str(u["round"]),
            "coldbatch_sha256": u["sha256"][:32],
        }

    async def _upload(self, u: dict[str, Any]) -> None:
        name, not_before = self._filename(u), (u["intent_at"] or 0) - 120
        found = None
        if u["id"] not in self._fresh:  # a crash may have happened after the upload: look before sending again
            found = await self.provider.find_file(name, u["bytes"], not_before)
        f, found = await self._post(
            u,
            found,
            lambda: self.provider.upload(Path(u["path"]), name),
            lambda: self.provider.find_file(name, u["bytes"], not_before),
            "file",
        )
        self.ledger.move_unit(u["id"], LG.UPLOADED, file_id=f["id"])
        self.emit("uploaded", {"unit": u["id"], "file_id": f["id"], "adopted": found is not None})

    async def _post(
        self,
        u: dict[str, Any],
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
                logger.warning("unit %s: %s; looking for the %s before sending it again", u["id"], exc, what)
                await self.sleep(wait)
                found = await find()
        return found, found

    async def _create(self, u: dict[str, Any]) -> None:
        tag = self._tag(u)
        found = None if u["id"] in self._fresh else await self._find_batch(u)
        endpoint = self.opts.spec["endpoint"]
        b, found = await self._post(
            u,
            found,
            lambda: self.provider.create_batch(u["file_id"], endpoint, tag, self.opts.completion_window),
            lambda: self._find_batch(u),
            "batch",
        )
        self.ledger.move_unit(u["id"], LG.CREATED, batch_id=b["id"], batch_status=b["status"])
        self.emit("created", {"unit": u["id"], "batch_id": b["id"], "adopted": found is not None})

    async def _poll(self, u: dict[str, Any], b: dict[str, Any] | None = None) -> bool:
        if b is None:
            b = await self.provider.retrieve(u["batch_id"])
        status = b["status"]
        counts = b.get("request_counts") or {}
        finished = int(counts.get("completed", 0) or 0) + int(counts.get("failed", 0) or 0)
        self._moving |= finished > self._counts.get(u["id"], 0)
        self._counts[u["id"]] = finished
        if status != u["batch_status"]:
            self.ledger.set_batch_status(u["id"], status)
            self.emit(
                "status",
                {"unit": u["id"], "batch_id": u["batch_id"], "status": status, "counts": b.get("request_counts")},
            )
        if status not in TERMINAL:
            return bool(status != u["batch_status"])
        if status == "failed":
            await self._failed_batch(u, b)
        else:
            await self._collect(u, b)
        return True

    async def _failed_batch(self, u: dict[str, Any], b: dict[str, Any]) -> None:
        errors = ((b.get("errors") or {}).get("data")) or []
        if any(e.get("code") == "token_limit_exceeded" for e in errors) and u["try"] < MAX_REQUEUES:
            # the provider's queue is full: send the same file again later, as a new try (a new tag); the
            # failed batch stays on the provider's list under the old try's tag, so reconciliation never adopts it
            self.ledger.move_unit(u["id"], LG.UPLOADED, batch_id=None, batch_status=None, **{"try": u["try"] + 1})
            wait = min(self.opts.poll_interval * 2 ** min(u["try"], 6), max(self.opts.max_poll_interval, 1.0))
            self._not_before[u["id"]] = time.monotonic() + wait
            self.emit("requeued", {"unit": u["id"], "reason": "token_limit_exceeded", "try": u["try"] + 1})
            return
        by_line = {e.get("line"): e for e in errors if e.get("line")}
        first = errors[0] if errors else {"code": "batch_failed", "message": "the batch failed"}
        outcomes = []
        for n, line in request_lines(Path(u["path"])):
            e = by_line.get(n, first)
            outcomes.append(LG.Outcome(custom_id_of(line), "failed", None, e.get("code"), e.get("message")))
        self.ledger.collect(
            u,
            outcomes,
            state=LG.FAILED,
            batch_status="failed",
            output_file_id=b.get("output_file_id"),
            error_file_id=b.get("error_file_id"),
            detail=orjson.dumps(errors[:20]).decode(),
        )
        self.emit("failed", {"unit": u["id"], "batch_id": u["batch_id"], "errors": errors[:3]})
        await self._clean_remote(u, b)

    async def _collect(self, u: dict[str, Any], b: dict[str, Any]) -> None:
        folder = self.folder / "results"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for kind, fid in (("output", b.get("output_file_id")), ("error", b.get("error_file_id"))):
            if fid:
                dest = folder / f"u{u['id']}.{kind}.jsonl"
                await self.provider.download(fid, dest)
                files.append((kind, dest))
        with _gc.paused():  # one pass over up to 50,000 results: millions of short-lived objects, no cycles
            counts = self._record_collected(u, b, files)
        self.emit("collected", {"unit": u["id"], "batch_id": u["batch_id"], "status": b["status"], **counts})
        await self._clean_remote(u, b)

    def _record_collected(self, u: dict[str, Any], b: dict[str, Any], files: list[tuple[str, Path]]) -> dict[str, int]:
        endpoint = self.opts.spec["endpoint"]
        cancelled_by_user = self.ledger.job(self.job_id)["status"] in CANCELLED  # type: ignore[index]
        expected = [custom_id_of(ln) for _, ln in request_lines(Path(u["path"]))]
        outcomes: dict[str, LG.Outcome] = {}
        schema = self.opts.request_spec().answer_schema
        labels = structured.label_field(schema)
        for kind, dest in files:
            items = (
                read_output(dest, endpoint, cancelled_by_user=cancelled_by_user, labels=labels)
                if kind == "output"
                else read_errors(dest, cancelled_by_user=cancelled_by_user)
            )
            for o in items:
                outcomes[o.custom_id] = structured.check(
                    o, schema, attempt=u["round"], retries=self.opts.invalid_output_retries
                )
        for cid in expected:
            if cid not in outcomes:
                outcomes[cid] = (
                    LG.Outcome(cid, "failed", None, "batch_cancelled", "cancelled by the user")
                    if cancelled_by_user and b["status"] == "cancelled"
                    else LG.Outcome(cid, "retry", None, "missing_result", "the provider returned no result")
                )
        wanted = set(expected)
        counts = self.ledger.collect(
            u,
            (o for cid, o in outcomes.items() if cid in wanted),
            batch_status=b["status"],
            output_file_id=b.get("output_file_id"),
            error_file_id=b.get("error_file_id"),
        )
        self._remember(o for cid, o in outcomes.items() if cid in wanted)
        return counts

    def _remember(self, outcomes: Iterable[LG.Outcome]) -> None:
        """Cache answers that were collected and are valid (a label when --labels was used), by question key."""
        dedup, use_cache = self._dedup_and_cache()
        if not (dedup and use_cache) or self.opts.cache_only:
            return
        entries = [
            Entry(o.custom_id, o.content, o.prompt_tokens, o.completion_tokens, o.confidence)
            for o in outcomes
            if o.state == "ok" and o.content is not None and o.custom_id.startswith(KEY_PREFIX)
        ]
        # (answers that miss the labels/schema were turned into invalid_output by structured.check already)
        if entries:
            cache = self._cache()
            try:
                cache.put_many(entries)
                cache.prune()
            finally:
                cache.close()

    async def _clean_remote(self, u: dict[str, Any], b: dict[str, Any]) -> None:
        if self.opts.keep_remote_files:
            return
        ok = True
        for fid in dict.fromkeys((u["file_id"], b.get("output_file_id"), b.get("error_file_id"))):
            if fid:
                try:
                    await self.provider.delete_file(fid)
                except Exception as exc:  # housekeeping must never fail a job
                    logger.warning("could not delete remote file %s: %s", fid, exc)
                    ok = False
        if ok:
            self.ledger.mark_cleaned(u["id"])

    async def _sweep_remote(self) -> None:
        """Delete what a crash (between collection and cleanup) or a cancel left on the provider."""
        if self.opts.keep_remote_files:
            return
        for u in self.ledger.units(self.job_id, [LG.COLLECTED, LG.FAILED]):
            if not u["remote_cleaned"]:
                await self._clean_remote(
                    u, {"output_file_id": u["output_file_id"], "error_file_id": u["error_file_id"]}
                )

    # -- retries ------------------------------------------------------------------------------------------
    def _plan_retry_round(self) -> bool:
        """Put transiently failed rows into new units (a new round); False when there is nothing (more) to retry."""
        ids = self.ledger.retry_ids(self.job_id)
        if not ids:
            return False
        job = self.ledger.job(self.job_id)
        assert job is not None
        rnd = self.ledger.max_round(self.job_id) + 1
        if rnd > self.opts.max_attempts or job["status"] in (*CANCELLED, "rescued"):
            self.ledger.give_up(self.job_id, ids)
            return False
        # idempotent: a crash after writing the files but before add_units commits just writes them again (same
        # rows in the same order, same bytes); add_units ignores a (round, shard) the ledger already holds
        folder = self.folder / "retries"
        folder.mkdir(parents=True, exist_ok=True)
        left = set(ids)
        units = self._write_retry_files(folder, left, rnd)
        if left:  # not in any shard (cannot happen unless the job folder was altered): report, never loop
            logger.warning("%d row(s) to retry are in no shard of job %s", len(left), self.job_id)
            self.ledger.give_up(self.job_id, left)
        if not units:
            return False
        for unit in units:
            unit["tokens"] = self._tokens_of(Path(unit["path"]))
        self.ledger.add_units(self.job_id, units)
        self.emit("retry_round", {"round": rnd, "requests": len(ids), "units": len(units)})
        return True

    def _write_retry_files(self, folder: Path, ids: set[str], rnd: int) -> list[dict[str, Any]]:
        """The rows to retry, in input order, cut into files within the job's limits (requests, bytes, one model)."""
        lim = Limits(**self.opts.limits)
        units: list[dict[str, Any]] = []
        out: Any = None
        cur: dict[str, Any] = {}
        h: Any = None

        def close() -> None:
            if out is not None:
                out.close()
                units.append({**cur, "sha256": h.hexdigest()})

        try:
            for line, req in job_requests(self.ledger, self.job_id):
                if req.custom_id not in ids:
                    continue
                data = line + b"\n"
                model = str(req.body.get("model", ""))
                if (
                    out is None
                    or cur["requests"] >= lim.max_requests
                    or cur["bytes"] + len(data) > lim.max_bytes
                    or model != cur["model"]
                ):
                    close()
                    path = folder / f"round-{rnd}-{len(units) + 1:05d}.jsonl"
                    out, h = path.open("wb"), hashlib.sha256()
                    cur = {
                        "round": rnd,
                        "shard": len(units) + 1,
                        "path": str(path),
                        "requests": 0,
                        "bytes": 0,
                        "model": model,
                    }
                out.write(data)
                h.update(data)
                cur["requests"] += 1
                cur["bytes"] += len(data)
                ids.discard(req.custom_id)  # a row is retried once per round, even if its id repeats
        finally:
            close()
        return units

    # -- reporting ------------------------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        """Units by state, the ledger's results, and `remote_done`: the requests that running batches have
        finished by the provider's `request_counts` (not collected yet), so a display can move while a batch
        runs; `requests`: the first round's requests to send (a progress bar's total)."""
        units = self.ledger.units(self.job_id)
        by: dict[str, int] = {}
        for u in units:
            key = u["batch_status"] if u["state"] == LG.CREATED and u["batch_status"] else u["state"]
            by[key] = by.get(key, 0) + 1
        remote = sum(self._counts.get(u["id"], 0) for u in units if u["state"] == LG.CREATED)
        total = sum(u["requests"] for u in units if u["round"] == 1)
        return {
            "units": len(units),
            "by_state": by,
            "remote_done": remote,
            "requests": total,
            **self.ledger.summary(self.job_id),
        }

    async def finish(self, started: float) -> dict[str, Any]:
        await self._sweep_remote()
        job = self.ledger.job(self.job_id)
        assert job is not None
        written = write_job_output(self.ledger, job, self.root)
        summary = self.ledger.summary(self.job_id)
        price = self.prices.lookup(self.opts.spec["model"])
        actual = sync = None
        if price is not None:
            actual = float(
                price.cost(
                    summary["prompt_tokens"],
                    summary["completion_tokens"],
                    batch=True,
                    cached_tokens=summary["cached_tokens"],
                )
            )
            sync = float(
                price.cost(
                    summary["prompt_tokens"],
                    summary["completion_tokens"],
                    batch=False,
                    cached_tokens=summary["cached_tokens"],
                )
            )
        paid = sync if self.opts.mode == "sync" else actual  # sync mode pays sync prices
        full = job["estimate"] or {}
        est = full.get("totals") or {}
        sync_all = est.get("sync_cost_usd")  # every row sent one by one at sync prices: the baseline
        plan = full.get("plan") or {}
        report = {
            "job": self.job_id,
            "output": str(job["output_path"]),
            "rows": written["rows"],
            "rejected_rows": written["rejected"],
            **summary,
            "succeeded": written["succeeded"],
            "failed": written["failed"],
            "answered_from_cache": written["from_cache"],
            "distinct_requests": plan.get("distinct_requests"),
            "cache_hits": plan.get("cache_hits"),
            "requests_sent": plan.get("requests_to_send"),
            "rounds": self.ledger.max_round(self.job_id),
            "cost_batch_usd": actual,
            "cost_sync_usd": sync,
            "cost_sync_all_rows_usd": sync_all,
            "cost_usd": paid,
            "mode": self.opts.mode,
            "route": full.get("route"),
            "saving_pct": round((1 - paid / sync_all) * 100, 2) if paid is not None and sync_all else None,
            "estimated_batch_usd": est.get("final_cost_usd", est.get("batch_cost_usd")),
            "estimated_input_tokens": est.get("input_tokens_to_send", est.get("input_tokens")),
            "seconds": round(time.time() - started, 2),
        }
        rescued = self.ledger.rescued_summary(self.job_id)
        if rescued["requests"]:
            extra = None
            if price is not None:  # what the rescued requests cost at sync prices over what batch would have
                extra = float(
                    price.cost(rescued["prompt_tokens"], rescued["completion_tokens"], batch=False)
                    - price.cost(rescued["prompt_tokens"], rescued["completion_tokens"], batch=True)
                )
            report["deadline_rescue"] = {
                **rescued,
                "rows_via_batch_or_cache": written["rows"] - rescued["rows"],
                "extra_cost_usd": extra,
            }
        final = "cancelled" if job["status"] in CANCELLED else "done"
        self.ledger.set_job(self.job_id, status=final, report=report)
        self.emit("done", report)
        return report

    async def cancel(self) -> None:
        """Cancel every running batch of the job; the next `run` collects what finished."""
        self.ledger.set_job(self.job_id, status="cancelling")
        for u in self.ledger.units(self.job_id, [LG.CREATED]):
            await self.provider.cancel(u["batch_id"])
            self._cancel_sent.add(u["id"])
        for u in self.ledger.units(self.job_id, [LG.PLANNED, LG.UPLOADED]):
            self.ledger.move_unit(u["id"], LG.FAILED, detail="cancelled before submission")
        self.emit("cancelling", {})
