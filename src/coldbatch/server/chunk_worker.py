"""Executes chunks of running batches: the `coldbatch worker` process (and the work a `serve` does too).

A worker claims a chunk (the oldest open one; `FOR UPDATE SKIP LOCKED`, so workers never queue behind
each other), reads only its byte range of the input, skips the lines already logged (a chunk claimed
again after a lease ran out resumes per line), runs the rest on the engine and logs results in groups.
A heartbeat renews the lease every third of it and reads the batch's status: cancelled, expired or a
lease lost stops the chunk (its in-flight requests still log, which the store accepts only while the
batch is `in_progress` or `cancelling`). At-least-once execution, exactly-once effect: a result line
counts once by the log's primary key, whoever logged it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from coldbatch import hotpath
from coldbatch.engines.base import Engine
from coldbatch.protocol.batches import past_window
from coldbatch.server import engine_calls
from coldbatch.server.executor import ExecutorConfig
from coldbatch.server.result_log import result_row
from coldbatch.server.scaleout import LEASE_SECONDS, process_name
from coldbatch.server.scheduler import COLD, Slots
from coldbatch.store.lines import blob_lines
from coldbatch.store.postgres import PgStore

logger = logging.getLogger(__name__)

_Item = tuple[int, str, dict[str, Any]]  # line number, custom_id, body


class ChunkWorker:
    def __init__(
        self,
        store: PgStore,
        blobs: Any,
        engine: Engine,
        slots: Slots | None = None,
        *,
        config: ExecutorConfig | None = None,
        lease_seconds: float = LEASE_SECONDS,
        chunks_at_once: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.blobs, self.engine = store, blobs, engine
        #: chunks in progress at once: 2 lets one chunk's reads and claims overlap another's execution (the engine's
        #: concurrency is shared); 1 (serve's own worker) keeps batches strictly in turn
        self.chunks_at_once = max(1, chunks_at_once)
        self._lanes: dict[str, asyncio.Semaphore] = {}  #: per endpoint: the engine's concurrency, in groups
        self.slots = slots or Slots(engine.info.most_concurrency)
        self.config = config or ExecutorConfig()
        self.lease, self.clock = lease_seconds, clock
        self.me = process_name("worker")
        self._wake = asyncio.Event()
        self._check: dict[tuple[str, int], asyncio.Event] = {}  #: running chunks: wake their heartbeat
        self.requests_done = 0  #: requests executed by this process (for /metrics and the benchmarks)
        self.chunks_done = 0

    def notify(self, batch_id: str | None = None) -> None:
        """Look again now: new work (wake the claim loop) or a cancel (run the heartbeats now)."""
        self._wake.set()
        for (bid, _), ev in list(self._check.items()):
            if batch_id is None or bid == batch_id:
                ev.set()

    async def run_forever(self) -> None:
        await asyncio.gather(*(self._claim_loop() for _ in range(self.chunks_at_once)))

    async def _claim_loop(self) -> None:
        idle = self.config.poll_seconds
        while True:
            try:
                chunk = await asyncio.to_thread(self.store.claim_chunk, self.me, self.lease)
            except Exception:
                logger.exception("claiming a chunk failed; retrying")
                chunk = None
                await asyncio.sleep(1.0)
            if chunk is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle)
                continue
            try:
                await self.run_chunk(chunk)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception(
                    "chunk %s/%s failed; its lease runs out and it is claimed again", chunk["batch_id"], chunk["chunk"]
                )

    async def run_chunk(self, c: dict[str, Any]) -> None:
        """Execute one claimed chunk's remaining lines, then mark it done (or give the lease up)."""
        bid, key = c["batch_id"], (c["batch_id"], c["chunk"])
        row = await asyncio.to_thread(self.store.get_batch, bid, None)
        if row is None or row["status"] != "in_progress":
            await asyncio.to_thread(self.store.release_chunk, bid, c["chunk"], self.me)
            return
        items = await asyncio.to_thread(self._items, row, c)
        stop, check = asyncio.Event(), asyncio.Event()
        self._check[key] = check
        beat = asyncio.create_task(self._heartbeat(c, stop, check))
        try:
            await self._execute(row, items, stop)
        finally:
            beat.cancel()
            self._check.pop(key, None)
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if await asyncio.to_thread(self.store.finish_chunk, bid, c["chunk"], self.me):
            self.chunks_done += 1

    def _items(self, row: dict[str, Any], c: dict[str, Any]) -> list[_Item]:
        """The chunk's lines not logged yet (a chunk is at most a few thousand lines: fine in memory)."""
        done = self.store.done_lines(row["id"], c["first_line"], c["last_line"])
        items = []
        for n, _, line in blob_lines(self.blobs, row["input_file_id"], c["start_byte"], c["end_byte"], c["first_line"]):
            if n in done or not line or line.isspace():
                continue
            req = orjson.loads(line)
            items.append((n, req["custom_id"], req["body"]))
        return items

    async def _heartbeat(self, c: dict[str, Any], stop: asyncio.Event, check: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(check.wait(), self.lease / 3)
            check.clear()
            status = await asyncio.to_thread(self.store.heartbeat, c["batch_id"], c["chunk"], self.me, self.lease)
            if status != "in_progress":
                stop.set()

    async def _execute(self, row: dict[str, Any], items: list[_Item], stop: asyncio.Event) -> None:
        endpoint = row["endpoint"]
        size, lanes = engine_calls.group_size(self.engine, endpoint), engine_calls.lanes(self.engine, endpoint)
        shared = self._lanes.setdefault(endpoint, asyncio.Semaphore(lanes))
        pending: list[Any] = []
        last = [time.monotonic()]
        flushing = asyncio.Lock()
        groups = iter([items[i : i + size] for i in range(0, len(items), size)])

        async def flush() -> None:
            async with flushing:
                rows, pending[:] = list(pending), []
                last[0] = time.monotonic()
                if rows:
                    await asyncio.to_thread(self.store.record_results, row["id"], rows)

        async def lane() -> None:
            hotpath.PRIORITY.set(hotpath.COLD)
            for group in groups:
                if stop.is_set() or past_window(row["expires_at"], self.clock()):
                    stop.set()
                    return
                async with shared, self.slots.slot(COLD):  # (lanes are shared by the chunks in progress)
                    results = await engine_calls.complete(self.engine, endpoint, [body for _, _, body in group])
                pending.extend(result_row(line, cid, res) for (line, cid, _), res in zip(group, results, strict=True))
                self.requests_done += len(group)
                if len(pending) >= self.config.group_size or time.monotonic() - last[0] >= self.config.flush_seconds:
                    await flush()

        try:
            await asyncio.gather(*(lane() for _ in range(lanes)))
        finally:
            await flush()
