"""Prometheus metrics for `coldbatch serve` (`GET /metrics`), one registry per app.

Why this shape: the batch path must stay as cheap as it is (tens of thousands of requests a second on
the echo fixture), so nothing is counted per batch request. Everything about batches and files is read
from the store when Prometheus scrapes — the request counts and token usage the executor already
commits with each group of results, the status of every batch, the size of every upload — so those
figures are exactly what the batches themselves report, and they survive a restart. Only what the store
does not hold is counted in memory: synchronous requests (one count and one observation each, beside
an engine call that costs far more), the time a request waited for an engine slot (once per slot, i.e.
per chunk of up to 32 batch requests), and the engine workers' restarts and crashes (`pool.health()`).
Store rows that can no longer change (terminal batches, file sizes) are summed once and kept, so a
scrape reads only the recent batches.

No label carries an API key or an owner: the figures are the server's, not a tenant's. The `model`
label of synchronous requests is kept only for the first `MAX_MODELS` names seen (then "other"), so a
client sending random model names cannot blow up the series count.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from coldbatch.core.status import BatchStatus
from coldbatch.engines.base import Engine, Result
from coldbatch.server.scheduler import COLD, HOT, Slots
from coldbatch.store.interfaces import ServerStore

#: created → terminal, in seconds: from a test's seconds to the 24 h window
BATCH_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
MAX_MODELS = 100
_TOKEN_TYPES = (("input", "input_tokens"), ("cached_input", "cached_tokens"), ("output", "output_tokens"))


class ServerMetrics:
    """The app's registry: a collector that reads the store, slots and engine at scrape time, plus the
    few in-memory series (synchronous requests, slot waits)."""

    def __init__(self, store: ServerStore, engine: Engine, slots: Slots) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._sync = _SyncCounts()
        self._wait = {HOT: _Histogram(WAIT_BUCKETS), COLD: _Histogram(WAIT_BUCKETS)}
        slots.on_wait = self._on_wait
        self.registry.register(_StoreCollector(store, engine, slots, self._sync, self._wait))

    def _on_wait(self, priority: int, seconds: float) -> None:
        self._wait[priority].observe(seconds)

    def sync_request(self, endpoint: str, model: Any, result: Result, seconds: float) -> None:
        """Count one answered synchronous request."""
        self._sync.add(endpoint, model, "completed" if result.ok else "failed", result.usage, seconds)

    def exposition(self) -> bytes:
        """The text format (version 0.0.4). Reads the store: call it off the event loop."""
        return generate_latest(self.registry)


class _Histogram:
    """A fixed-bucket histogram for one label set. Observed on the event loop only; a scrape (another
    thread) copies it, and may at worst see one observation's bucket before its sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs ending with +Inf, and the sum."""
        counts, total, out, running = list(self.counts), self.sum, [], 0
        for bound, n in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
            running += n
            out.append((bound, running))
        return out, total


class _SyncCounts:
    """Synchronous request and token counts and durations, updated on the event loop and read by the
    scrape thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.tokens: dict[tuple[str, str, str], int] = {}
        self.seconds: dict[tuple[str, str, str], _Histogram] = {}
        self._models: set[str] = set()

    def add(self, endpoint: str, model: Any, outcome: str, usage: dict[str, Any], seconds: float) -> None:
        name = model if isinstance(model, str) else ""
        with self._lock:
            if name not in self._models:
                if len(self._models) >= MAX_MODELS:
                    name = "other"
                self._models.add(name)
            key = (endpoint, name, outcome)
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.seconds.get(key)
            if hist is None:
                hist = self.seconds[key] = _Histogram(REQUEST_BUCKETS)
            hist.observe(seconds)
            for kind, n in _usage_tokens(usage):
                tkey = (endpoint, name, kind)
                self.tokens[tkey] = self.tokens.get(tkey, 0) + n

    def snapshot(
        self,
    ) -> tuple[
        dict[tuple[str, str, str], int],
        dict[tuple[str, str, str], int],
        dict[tuple[str, str, str], tuple[list[tuple[str, float]], float]],
    ]:
        with self._lock:
            return dict(self.requests), dict(self.tokens), {k: h.buckets() for k, h in self.seconds.items()}


def _usage_tokens(usage: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """(type, tokens) from an OpenAI usage object (chat/completions or responses naming)."""
    if not usage:
        return
    inp = usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    out = usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
    yield "input", int(inp)
    yield "cached_input", int(details.get("cached_tokens", 0) or 0)
    yield "output", int(out)


class _StoreCollector(Collector):
    """Everything read at scrape time: batches and uploads from the store, slots, engine workers."""

    def __init__(
        self, store: ServerStore, engine: Engine, slots: Slots, sync: _SyncCounts, wait: dict[int, _Histogram]
    ) -> None:
        self.store, self.engine, self.slots, self.sync, self.wait = store, engine, slots, sync, wait
        self.settled = _Settled()

    def collect(self) -> Iterator[Metric]:
        totals, uploads = self.settled.read(self.store)
        sync_requests, sync_tokens, sync_seconds = self.sync.snapshot()
        yield _batches_by_status(totals)
        yield from _requests_and_tokens(totals, sync_requests, sync_tokens)
        yield _batch_durations(totals)
        yield _sync_durations(sync_seconds)
        yield from _uploads(uploads)
        yield from self._slots()
        yield from _workers(self.engine)

    def _slots(self) -> Iterator[Metric]:
        s = self.slots
        depth = GaugeMetricFamily(
            "coldbatch_queue_waiting",
            "Requests (hot) or batch chunks (cold) waiting for an engine slot now.",
            labels=["queue"],
        )
        wait = HistogramMetricFamily(
            "coldbatch_queue_wait_seconds",
            "Time a request (hot: synchronous) or a chunk of batch requests (cold) waited for an engine slot.",
            labels=["queue"],
        )
        for priority, name in ((HOT, "hot"), (COLD, "cold")):
            depth.add_metric([name], s.waiting(priority))
            wait.add_metric([name], *self.wait[priority].buckets())
        yield depth
        yield wait
        yield GaugeMetricFamily("coldbatch_engine_slots", "Requests the engine takes at once.", value=s.capacity)
        yield GaugeMetricFamily("coldbatch_engine_slots_in_use", "Engine slots held now.", value=s.in_use)


class _Settled:
    """What the store says about rows that can no longer change, summed once: batches up to
    `store.settled_seq()` (all terminal) and every file row (its size is fixed). A scrape then reads only the
    batches after that point (the few still running, and newer ones) and the files uploaded since, so its
    cost follows the recent batches, not the whole history (20,000 batches: ~100 ms a scrape before)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes may overlap (two Prometheus servers)
        self.batches_upto = 0
        self.batches: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.files_upto = 0
        self.files: dict[str, list[int]] = {}

    def read(self, store: ServerStore) -> tuple[list[dict[str, Any]], list[tuple[str, int, int]]]:
        with self._lock:
            settled = store.settled_seq()
            if settled > self.batches_upto:
                _add_rows(self.batches, store.batch_totals(BATCH_BUCKETS, after=self.batches_upto, upto=settled))
                self.batches_upto = settled
            totals: dict[tuple[str, str, str], dict[str, Any]] = {k: dict(v) for k, v in self.batches.items()}
            _add_rows(totals, store.batch_totals(BATCH_BUCKETS, after=self.batches_upto))
            rows, self.files_upto = store.upload_totals(self.files_upto)
            for purpose, n, nbytes in rows:
                acc = self.files.setdefault(purpose, [0, 0])
                acc[0] += n
                acc[1] += nbytes
            return list(totals.values()), [(p, n, b) for p, (n, b) in sorted(self.files.items())]


def _add_rows(into: dict[tuple[str, str, str], dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Add `batch_totals` rows into `into`, by (endpoint, model, status); every other field is a sum."""
    for r in rows:
        key = (r["endpoint"], r["model"], r["status"])
        acc = into.get(key)
        if acc is None:
            into[key] = {k: (v or 0) if k not in ("endpoint", "model", "status") else v for k, v in r.items()}
            continue
        for k, v in r.items():
            if k not in ("endpoint", "model", "status"):
                acc[k] += v or 0


def _requests_and_tokens(
    totals: list[dict[str, Any]],
    sync_requests: dict[tuple[str, str, str], int],
    sync_tokens: dict[tuple[str, str, str], int],
) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "coldbatch_requests",
        "Requests answered, by mode (batch: the request counts of every batch; sync: the synchronous endpoints).",
        labels=["mode", "endpoint", "model", "outcome"],
    )
    tokens = CounterMetricFamily(
        "coldbatch_tokens",
        "Tokens of answered requests (usage), by type.",
        labels=["mode", "endpoint", "model", "type"],
    )
    per_key: dict[tuple[str, str], dict[str, int]] = {}
    for r in totals:
        acc = per_key.setdefault(
            (r["endpoint"], r["model"]),
            dict.fromkeys(("completed", "failed", "input_tokens", "cached_tokens", "output_tokens"), 0),
        )
        for k in acc:
            acc[k] += r[k] or 0
    for (endpoint, model), acc in sorted(per_key.items()):
        for outcome in ("completed", "failed"):
            requests.add_metric(["batch", endpoint, model, outcome], acc[outcome])
        for kind, column in _TOKEN_TYPES:
            tokens.add_metric(["batch", endpoint, model, kind], acc[column])
    for (endpoint, model, outcome), n in sorted(sync_requests.items()):
        requests.add_metric(["sync", endpoint, model, outcome], n)
    for (endpoint, model, kind), n in sorted(sync_tokens.items()):
        tokens.add_metric(["sync", endpoint, model, kind], n)
    yield requests
    yield tokens


def _sync_durations(seconds: dict[tuple[str, str, str], tuple[list[tuple[str, float]], float]]) -> Metric:
    family = HistogramMetricFamily(
        "coldbatch_sync_request_duration_seconds",
        "Synchronous requests: time from asking for an engine slot to the engine's answer.",
        labels=["endpoint", "model", "outcome"],
    )
    for key, (buckets, total) in sorted(seconds.items()):
        family.add_metric(list(key), buckets, total)
    return family


def _batches_by_status(totals: list[dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily("coldbatch_batches", "Batches in the store, by status.", labels=["status"])
    counts = dict.fromkeys((s.value for s in BatchStatus), 0)
    for r in totals:
        counts[r["status"]] += r["batches"]
    for status, n in counts.items():
        family.add_metric([status], n)
    return family


def _batch_durations(totals: list[dict[str, Any]]) -> Metric:
    family = HistogramMetricFamily(
        "coldbatch_batch_duration_seconds",
        "Terminal batches: time from creation to their final status (whole seconds), by that status.",
        labels=["status"],
    )
    by_status: dict[str, list[float]] = {}
    for r in totals:
        if r["ended"]:
            acc = by_status.setdefault(r["status"], [0.0] * (len(BATCH_BUCKETS) + 2))
            for i in range(len(BATCH_BUCKETS)):
                acc[i] += r[f"le{i}"]
            acc[-2] += r["ended"]
            acc[-1] += r["duration"]
    for status, acc in sorted(by_status.items()):
        buckets = [(_le(b), acc[i]) for i, b in enumerate(BATCH_BUCKETS)] + [("+Inf", acc[-2])]
        family.add_metric([status], buckets, acc[-1])
    return family


def _le(bound: float) -> str:
    return repr(float(bound))


def _uploads(rows: list[tuple[str, int, int]]) -> Iterator[Metric]:
    files = CounterMetricFamily(
        "coldbatch_uploaded_files", "Files uploaded (deleted ones included).", labels=["purpose"]
    )
    size = CounterMetricFamily(
        "coldbatch_uploaded_bytes", "Bytes uploaded (deleted files included).", labels=["purpose"]
    )
    for purpose, n, nbytes in rows:
        files.add_metric([purpose], n)
        size.add_metric([purpose], nbytes)
    yield files
    yield size


def _workers(engine: Engine) -> Iterator[Metric]:
    health = getattr(engine, "health", None)
    if health is None:
        return  # an in-process engine: no workers to report
    h = health()
    yield GaugeMetricFamily("coldbatch_engine_workers", "Engine worker slots configured.", value=h["workers"])
    yield GaugeMetricFamily("coldbatch_engine_workers_live", "Engine worker processes alive now.", value=h["live"])
    yield GaugeMetricFamily(
        "coldbatch_engine_workers_given_up", "Worker slots given up (they kept crashing).", value=len(h["given_up"])
    )
    yield CounterMetricFamily(
        "coldbatch_engine_worker_restarts",
        "Engine worker processes started to replace one that died.",
        value=h["restarts"],
    )
    yield CounterMetricFamily(
        "coldbatch_engine_worker_crashes", "Engine worker processes that died unasked.", value=h["crashes"]
    )
