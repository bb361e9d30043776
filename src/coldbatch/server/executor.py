"""Runs batches: validate → execute on the engine → finalize, and resumes all of it after a crash.

Exactly-once effect, at-least-once execution (DESIGN.md): a finished request counts only once its
result row is committed (`ServerStore.record_results`, in groups); after a restart the executor skips
every `custom_id` already logged and re-runs the rest. Result files are built from the log alone
(input order; the never-run lines of an expired or cancelled batch get ids derived from the batch and
the `custom_id`), under keys derived from the batch id, and registered in the same transaction as the
final status: a crash while finalizing just rebuilds the same bytes under the same keys. The log of a
terminal batch is purged after that transaction, not in it, and `recover()` (run once at start)
finishes whatever a crash interrupted: those purges, and orphan blobs.

This module drives batches; what scale-out shares with it lives beside it (the log's row and result-file
format in `result_log.py`, the enqueued-token quota in `admission.py`), and what a full disk does to a
running batch in `diskroom.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from coldbatch import hotpath
from coldbatch.core.status import BatchStatus as S
from coldbatch.engines.base import BACKGROUND, Engine, cpu_turn
from coldbatch.jsonl import request_lines
from coldbatch.protocol.batches import past_window, window_left
from coldbatch.protocol.lines import RequestLine
from coldbatch.server import admission, checking, engine_calls, result_log, tracing
from coldbatch.server.batch_tasks import BatchTasks, nap
from coldbatch.server.diskroom import DiskRoom
from coldbatch.server.scheduler import COLD, Slots
from coldbatch.store.blobs import remove_orphans
from coldbatch.store.interfaces import BlobStore, ServerStore
from coldbatch.store.records import ResultRow
from coldbatch.store.space import is_disk_full

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 1000
#: finished results a lane lets pile up behind a write in flight before it waits for that write, in groups
BACKLOG_GROUPS = 4
_Item = tuple[int, str, dict[str, Any]]  # one request to run: line number, custom_id, body


@dataclass
class ExecutorConfig:
    group_size: int = 512  #: results per durable commit
    flush_seconds: float = 0.25  #: ...or at least this often
    enqueued_token_limit: int | None = None  #: per model; None = unlimited
    poll_seconds: float = 0.5
    #: batches executing at once, oldest first; the rest wait their turn (validated, `in_progress`). One
    #: batch already keeps the engine busy (its lanes fill `max_concurrency`), and running them one after
    #: another finishes the first ones early, so clients collect while later ones run.
    running_batches: int = 1
    #: a running batch that cannot store its results (the disk is full) waits, retrying with back-off up to
    #: `disk_retry_max_seconds` apart, and fails with `insufficient_storage` after this long without room
    disk_full_seconds: float = 600.0
    disk_retry_max_seconds: float = 5.0


@dataclass
class _Run:
    """Bookkeeping for one pass over one batch's remaining requests."""

    row: dict[str, Any]
    pending: list[ResultRow] = field(default_factory=list)  #: finished, not yet handed to a write
    last_flush: float = field(default_factory=time.monotonic)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    queued: int = 0  #: requests handed to the lanes in this pass
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)  #: held by the lane whose write is in flight


class Executor:
    def __init__(
        self,
        store: ServerStore,
        blobs: BlobStore,
        engine: Engine,
        slots: Slots,
        *,
        config: ExecutorConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.blobs, self.engine, self.slots = store, blobs, engine, slots
        self.config = config or ExecutorConfig()
        self.clock = clock
        self._wake = asyncio.Event()
        self._runs: dict[str, _Run] = {}
        self._tasks = BatchTasks(self.drive, self._drive_failed, on_end=lambda bid: self._runs.pop(bid, None))
        self._turns = asyncio.Semaphore(max(1, self.config.running_batches))  # executions, FIFO
        self._validations = asyncio.Semaphore(1)  # validations, one at a time in creation order
        self._no_pool = False  # no worker process can be started here: validate on a thread
        self._waiting: dict[str, asyncio.Event] = {}  # batches waiting for their turn: a notify wakes them
        self._started = time.time()  # wall clock, compared with blob mtimes by recover()
        self.disk = DiskRoom(
            blobs.local_root,
            full_seconds=self.config.disk_full_seconds,
            retry_max_seconds=self.config.disk_retry_max_seconds,
        )
        self.tracing: tracing.Tracing = tracing.NOOP  #: spans per batch and request (server/tracing.py)

    def storage(self) -> dict[str, Any]:
        """For /health (server/diskroom.py)."""
        return self.disk.storage()

    def now(self) -> int:
        return int(self.clock())

    def notify(self, batch_id: str | None = None) -> None:
        """Something changed (a new batch, a cancel): look again now."""
        if batch_id in self._runs:
            self._runs[batch_id].stop.set()
        if batch_id in self._waiting:
            self._waiting[batch_id].set()
        self._wake.set()

    async def run_forever(self) -> None:
        with contextlib.suppress(OSError, NotImplementedError):  # (no processes: validation uses a thread)
            checking.warm()  # start the validation workers now
        try:
            await asyncio.to_thread(self.disk.keep_reserve)
            await asyncio.to_thread(self.recover)
        except Exception:
            logger.exception("recovery sweep failed; the server goes on without it")
        while True:
            self._tasks.start(self.store.unfinished_batches())
            await nap(self._wake, self.config.poll_seconds)

    def recover(self) -> None:
        """Finish what a crash interrupted (call once, before batches are driven): delete the results log of
        batches that reached a terminal status, and blobs no file row owns — result files of a finalize
        that never committed (it will rewrite them), uploads that never got their row, and deleted files
        no unfinished batch reads anymore. Blobs written since this executor was created are left alone:
        they may be uploads in flight."""
        for bid in self.store.finished_logs():
            self.store.purge_results(bid)
        remove_orphans(self.store, self.blobs, published_before=self._started - 0.1)

    async def aclose(self) -> None:
        await self._tasks.close()

    async def _drive_failed(self, batch_id: str, exc: Exception) -> None:
        """A drive raised: back off, then the next pass drives the batch again from what the store says."""
        if not is_disk_full(exc):
            logger.error("batch %s: executor error; it will be retried", batch_id, exc_info=exc)
            await asyncio.sleep(1.0)
        else:  # e.g. while writing the result files: the same work is redone once there is room
            self.disk.refused(f"batch {batch_id} could not write")
            await asyncio.sleep(self.config.disk_retry_max_seconds)

    async def drive(self, batch_id: str) -> None:
        """Move one batch forward until it is terminal (or its task is cancelled)."""
        while True:
            row = self.store.get_batch(batch_id, None)
            if row is None:
                return
            status = S(row["status"])
            if status == S.VALIDATING:
                async with self._validations:  # one at a time, in creation order, on the worker process
                    fresh = self.store.get_batch(batch_id, None)
                    if fresh is not None and fresh["status"] == S.VALIDATING:  # (not cancelled meanwhile)
                        await self._validate(fresh)
            elif status == S.IN_PROGRESS:
                await self._execute_in_turn(row)
            elif status == S.FINALIZING:
                await asyncio.to_thread(self._finalize, row, S.COMPLETED)
            elif status == S.CANCELLING:
                await asyncio.to_thread(self._finalize, row, S.CANCELLED)
            else:
                return

    # -- validating ---------------------------------------------------------------------------------------
    def _fail(self, row: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        self.store.transition(row["id"], S.FAILED, self.now(), errors={"object": "list", "data": errors})

    async def _validate(self, row: dict[str, Any]) -> None:
        f = self.store.get_file(row["input_file_id"], row["owner"])
        found = f is not None and self.blobs.exists(f["id"])
        errors = checking.precheck(row, found, self.engine.info.name, self.engine.info.endpoints)
        if errors or f is None:
            self._fail(row, errors)
            return
        args = (
            str(self.blobs.local_path(f["id"])),
            f["filename"],
            row["endpoint"],
            self.engine.info.models,
            MAX_REPORTED_ERRORS,
        )
        checked = await self._check_file(*args)
        if not checked.ok:
            self._fail(row, checked.errors)
            return
        await asyncio.to_thread(self._admit, row, f["id"], checked)

    async def _check_file(self, *args: Any) -> checking.Checked:
        """Validate in the worker process; in a thread where no process can be started (or it died)."""
        if not self._no_pool:
            try:
                pool = checking.worker_pool()
                # in halves on two workers only while no batch executes: one that runs keeps its core
                return await checking.check(pool, *args, halves=not self._runs)
            except BrokenProcessPool:
                logger.warning("the validation worker died; the next validation starts a new one")
                checking.discard(pool)
            except (OSError, NotImplementedError) as exc:  # pragma: no cover - platform without processes
                logger.warning("no validation worker process (%s); validating on a thread", exc)
                self._no_pool = True
        return await asyncio.to_thread(checking.check_file, *args)

    def _admit(self, row: dict[str, Any], file_id: str, checked: checking.Checked) -> None:
        """In progress, or failed for the enqueued-token quota (server/admission.py)."""
        limit = self.config.enqueued_token_limit
        tokens = admission.prompt_tokens(self.blobs.local_path(file_id), row["endpoint"]) if limit is not None else 0
        error = admission.over_quota(self.store, checked.model, tokens, limit)
        if error is not None:
            self._fail(row, [error])
            return
        self.store.transition(
            row["id"], S.IN_PROGRESS, self.now(), total=checked.requests, model=checked.model, enqueued_tokens=tokens
        )

    # -- in_progress --------------------------------------------------------------------------------------
    def _requests(self, row: dict[str, Any], skip: set[int]) -> Iterator[_Item]:
        """(line number, custom_id, body) of each request whose line is not in `skip`, in input order."""
        parse = RequestLine.parse
        for n, line in request_lines(self.blobs.local_path(row["input_file_id"])):
            if n not in skip:
                req = parse(line)
                yield n, req.custom_id, req.body

    def _chunks(self, row: dict[str, Any], skip: set[int], size: int) -> Iterator[list[_Item]]:
        chunk: list[_Item] = []
        for item in self._requests(row, skip):
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def _execute_in_turn(self, row: dict[str, Any]) -> None:
        """Wait for a turn (FIFO, `running_batches` at once), then execute. A notify (a cancel) or the end
        of the completion window ends the wait early; drive() then looks at the status again."""
        turns, bid = self._turns, row["id"]
        woken = self._waiting[bid] = asyncio.Event()
        acquire = asyncio.ensure_future(turns.acquire())
        wake = asyncio.ensure_future(woken.wait())
        try:
            await asyncio.wait(
                {acquire, wake},
                timeout=max(0.0, window_left(row["expires_at"], self.clock())),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            if acquire.done() and not acquire.cancelled():
                turns.release()
            raise
        finally:
            self._waiting.pop(bid, None)
            wake.cancel()
            if not acquire.done():
                acquire.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquire
        if not acquire.done() or acquire.cancelled():
            if past_window(row["expires_at"], self.clock()):
                await asyncio.to_thread(self._after_execute, row, 0)  # expired while it waited
            return
        try:
            fresh = self.store.get_batch(bid, None)
            if fresh is not None and fresh["status"] == S.IN_PROGRESS:
                await self._execute(fresh)
        finally:
            turns.release()

    async def _execute(self, row: dict[str, Any]) -> None:
        run = self._runs[row["id"]] = _Run(row)
        done = await asyncio.to_thread(self.store.done_lines, row["id"])
        size = engine_calls.group_size(self.engine, row["endpoint"])
        lanes = engine_calls.lanes(self.engine, row["endpoint"])
        queue: asyncio.Queue[list[_Item] | None] = asyncio.Queue(maxsize=2 * lanes)
        workers = [asyncio.create_task(self._lane(run, queue)) for _ in range(lanes)]
        try:
            for chunk in self._chunks(row, done, size):
                if run.stop.is_set() or past_window(row["expires_at"], self.clock()):
                    break
                run.queued += len(chunk)
                await queue.put(chunk)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        async with run.writing:
            if not await self._flush(run):
                await self._wait_for_room(run)
        await asyncio.to_thread(self._after_execute, row, run.queued)

    def _after_execute(self, row: dict[str, Any], queued: int) -> None:
        fresh = self.store.get_batch(row["id"], None)
        if fresh is None or fresh["status"] != S.IN_PROGRESS:
            return  # cancelled meanwhile: drive() finalizes it as cancelled
        logged = fresh["completed"] + fresh["failed"]
        if logged < fresh["total"] and past_window(fresh["expires_at"], self.clock()):
            self._finalize(fresh, S.EXPIRED)
        elif logged >= fresh["total"] or queued == 0:
            if logged < fresh["total"]:
                logger.error(
                    "batch %s: %d of %d requests logged but none left to run; finalizing",
                    row["id"],
                    logged,
                    fresh["total"],
                )
            self.store.transition(row["id"], S.FINALIZING, self.now())
        # else: this pass stopped early; drive() starts another one for the requests not yet logged

    async def _lane(self, run: _Run, queue: asyncio.Queue[list[_Item] | None]) -> None:
        hotpath.PRIORITY.set(hotpath.COLD)  # engines that pace upstream calls (relay) let hot requests go first
        BACKGROUND.set(True)  # CPU-bound steps take turns with the other lanes (engines.base.cpu_turn)
        try:
            await self._lane_loop(run, queue)
        except BaseException:
            run.stop.set()  # a dead lane must not leave the feeder blocked on a full queue forever (it did)
            while not queue.empty():
                queue.get_nowait()
            raise

    async def _lane_loop(self, run: _Run, queue: asyncio.Queue[list[_Item] | None]) -> None:
        endpoint = run.row["endpoint"]
        while (chunk := await queue.get()) is not None:
            if run.stop.is_set() or past_window(run.row["expires_at"], self.clock()):
                continue  # queued work past the completion window is left for the expired error file
            started = time.time_ns()
            async with self.slots.slot(COLD):
                results = await engine_calls.complete(self.engine, endpoint, [body for _, _, body in chunk])
            async with cpu_turn():  # one lane's results per loop turn: polls are served in between
                self.tracing.requests(run.row, chunk, results, started)
                add = run.pending.append
                for (line, cid, _), res in zip(chunk, results, strict=True):
                    add(result_log.result_row(line, cid, res))
                due = (
                    len(run.pending) >= self.config.group_size
                    or time.monotonic() - run.last_flush >= self.config.flush_seconds
                )
            # One write at a time, on a thread, while the other lanes go on; a lane waits for it only when
            # results pile up behind it (a slow or full disk), which bounds what is held here.
            if due and (not run.writing.locked() or len(run.pending) >= BACKLOG_GROUPS * self.config.group_size):
                async with run.writing:
                    if not await self._flush(run):  # the disk is full: the results stay here until it has room
                        await self._wait_for_room(run)
            # An engine that answers without waiting (echo) never suspends this task, and a queued chunk is
            # taken without suspending either: yield, so HTTP requests (polls, hot calls) are served
            # between chunks instead of after the whole batch (measured: 1 s per status poll under load).
            await asyncio.sleep(0)

    async def _flush(self, run: _Run) -> bool:
        """Log the finished requests in one transaction, then look at the status: a cancel (or a batch that
        is gone) stops the run. On a worker thread (the caller holds `run.writing`): the SQLite store inserts
        a group in one statement, with the GIL released, so the write runs on the other core while the
        lanes go on (a per-row `executemany` there fought the event loop for the GIL once per row). False: the
        disk is full (the rows are back in `run.pending`)."""
        rows, run.pending = run.pending, []
        run.last_flush = time.monotonic()
        if rows:
            try:
                await asyncio.to_thread(self.store.record_results, run.row["id"], rows)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                run.pending[:0] = rows  # kept, in order, for the next try
                self.disk.refused(f"batch {run.row['id']} could not log {len(rows)} results")
                return False
            self.disk.took()
        fresh = await asyncio.to_thread(self.store.get_batch, run.row["id"], None)
        if fresh is None or fresh["status"] != S.IN_PROGRESS:
            run.stop.set()
        return True

    async def _wait_for_room(self, run: _Run) -> None:
        """Back off (0.25 s, doubling, up to `disk_retry_max_seconds`) and retry the log until it takes the
        results; past `disk_full_seconds` without room, fail the batch with `insufficient_storage`."""
        delays = self.disk.delays()
        while not run.stop.is_set():
            if self.disk.patience_over() and self._fail_for_space(run):
                return
            await asyncio.sleep(next(delays))
            if await self._flush(run):
                return

    def _fail_for_space(self, run: _Run) -> bool:
        """Fail the batch for want of space (True once recorded: that write may need room too)."""
        self.disk.give_up_reserve()  # room for this one write
        try:
            moved = self.store.transition(
                run.row["id"], S.FAILED, self.now(), errors={"object": "list", "data": [self.disk.failure()]}
            )
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            return False
        logger.error("batch %s failed: no disk space for %.0f s", run.row["id"], self.config.disk_full_seconds)
        run.stop.set()
        run.pending.clear()
        if moved:
            with contextlib.suppress(Exception):
                self.store.purge_results(run.row["id"])  # frees the space its log held
        return True

    # -- finalizing / expired / cancelled ------------------------------------------------------------------
    def _finalize(self, row: dict[str, Any], final: S) -> None:
        """Build the output and error files from the log, then register them with the final status in one
        transaction. Deterministic: run again after a crash, it writes the same bytes under the same keys."""
        bid = row["id"]
        out_key, err_key = result_log.file_keys(bid)
        with self.blobs.writer(out_key) as out, self.blobs.writer(err_key) as err:
            counts = result_log.write_log(
                self.store, row, final, out, err, lambda seen: (cid for _, cid, _ in self._requests(row, seen))
            )
        if result_log.publish(self.store, self.blobs, row, final, counts, self.now()):
            self.disk.took()
            self.tracing.batch_ended(
                row, final.value, {"completed": counts["ok"], "failed": counts["err"], "never_run": counts["never"]}
            )
            self.store.purge_results(bid)
