"""Batches on PostgreSQL + any blob store, for any number of `serve` and `worker` processes.

Each `serve` process runs a `Coordinator`: for every unfinished batch it tries to take the batch's
lease (one coordinator per batch at a time; the lease runs out if its process dies, and another takes
over). The coordinator validates, splits the input into chunks of lines (line and byte ranges, in the
same transaction as `in_progress`), watches the chunks, and finalizes: output and error files streamed
from the results log into the blob store under keys derived from the batch id, registered with the
final status in one transaction, so a crash while finalizing only rewrites the same objects. Workers
(`server/chunk_worker.py`) execute chunks. Cancel and expiry: workers see them at their next heartbeat
(a third of a lease) and stop; the coordinator finalizes once no chunk holds a live lease, so a cancel
reaches chunks held by other workers within one lease period. The results log of a terminal batch is
purged only after it has been terminal for two lease periods, so a coordinator that lost its lease
mid-finalize still reads the whole log, never a purged half.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from coldbatch.core.status import BatchStatus as S
from coldbatch.engines.base import Engine
from coldbatch.protocol.batches import past_window
from coldbatch.server import admission, checking, result_log
from coldbatch.server.batch_tasks import BatchTasks, nap
from coldbatch.server.executor import MAX_REPORTED_ERRORS, ExecutorConfig
from coldbatch.store.blobs import remove_orphans
from coldbatch.store.lines import blob_lines, split_chunks
from coldbatch.store.postgres import PgStore

logger = logging.getLogger(__name__)

#: input lines per chunk (the issue's 500-2,000): small enough that a lost lease redoes little
CHUNK_LINES = 1000
LEASE_SECONDS = 30.0


def open_blobs(url: str | None, data_dir: Path) -> Any:
    """`s3://BUCKET/PREFIX` -> the S3 store (checked now); None -> the folder under `data_dir` (one machine)."""
    if url and url.startswith("s3://"):
        from coldbatch.store.s3 import S3BlobStore

        return S3BlobStore(url)
    if url:
        raise ValueError(f"--blobs {url!r}: expected s3://BUCKET/PREFIX")
    from coldbatch.store.blobs import LocalBlobStore

    return LocalBlobStore(data_dir / "files")


def process_name(kind: str) -> str:
    """A name for leases that says which process holds them (host, pid, kind)."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{time.monotonic_ns() % 100000}"


class Coordinator:
    """The `serve` side of scale-out: the executor interface the routes use (`notify`, `storage`)."""

    def __init__(
        self,
        store: PgStore,
        blobs: Any,
        engine: Engine,
        *,
        config: ExecutorConfig | None = None,
        lease_seconds: float = LEASE_SECONDS,
        chunk_lines: int = CHUNK_LINES,
        orphan_grace: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.blobs, self.engine = store, blobs, engine
        self.config = config or ExecutorConfig()
        self.lease, self.chunk_lines, self.clock = lease_seconds, chunk_lines, clock
        self.orphan_grace = orphan_grace
        self.me = process_name("serve")
        self._wake = asyncio.Event()
        self._tasks = BatchTasks(self.drive, self._drive_failed)
        self.worker: Any = None  #: an in-process ChunkWorker, woken with the coordinator
        self.tracing: Any = None

    def now(self) -> int:
        return int(self.clock())

    def notify(self, batch_id: str | None = None) -> None:
        self._wake.set()
        if self.worker is not None:
            self.worker.notify()

    def storage(self) -> dict[str, Any]:
        return {"status": "ok", "free_bytes": None, "full_for_seconds": None}

    async def run_forever(self) -> None:
        with contextlib.suppress(OSError, NotImplementedError):
            checking.warm()
        last_sweep = 0.0
        while True:
            if time.monotonic() - last_sweep > self.lease:
                last_sweep = time.monotonic()
                try:
                    await asyncio.to_thread(self.sweep)
                except Exception:
                    logger.exception("sweep failed; retried later")
            self._tasks.start(await asyncio.to_thread(self.store.unfinished_batches))
            await nap(self._wake, self.config.poll_seconds)

    def sweep(self, orphan_grace: float | None = None) -> None:
        """Purge logs of long-settled batches; delete blobs no file row owns (older than a grace period: a
        newer one may be an upload whose row is being written); abort abandoned multipart uploads."""
        grace = self.orphan_grace if orphan_grace is None else orphan_grace
        for bid in self.store.finished_logs(settled_seconds=2 * self.lease):
            self.store.purge_results(bid)
        remove_orphans(self.store, self.blobs, published_before=time.time() - grace)
        with contextlib.suppress(TypeError):
            self.blobs.clear_tmp(older_than=grace)

    async def aclose(self) -> None:
        await self._tasks.close()

    async def _drive_failed(self, batch_id: str, exc: Exception) -> None:
        """A drive raised: back off; the next pass of the main loop tries the batch again."""
        logger.error("batch %s: coordinator error; it will be retried", batch_id, exc_info=exc)
        await asyncio.sleep(1.0)

    async def drive(self, batch_id: str) -> None:
        """Move one batch forward while this process holds its lease; return when it is terminal or
        another process coordinates it (the main loop tries again later)."""
        while True:
            row = await asyncio.to_thread(self.store.get_batch, batch_id, None)
            if row is None or S(row["status"]) in (S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED):
                return
            if not await asyncio.to_thread(self.store.lease_batch, batch_id, self.me, self.lease):
                await asyncio.sleep(min(self.lease / 3, 5 * self.config.poll_seconds))
                return
            status = S(row["status"])
            if status == S.VALIDATING:
                await self._validate(row)
            elif status == S.FINALIZING:
                await asyncio.to_thread(self.finalize, row, S.COMPLETED)
            elif status in (S.IN_PROGRESS, S.CANCELLING) and await asyncio.to_thread(self._settle, row):
                continue
            else:
                await nap(self._wake, self.config.poll_seconds)

    def _settle(self, row: dict[str, Any]) -> bool:
        """Finalize a running batch that is done, expired or cancelled once no worker holds a live lease on
        it; True if it moved."""
        progress = self.store.chunk_progress(row["id"])
        if row["status"] == S.CANCELLING:
            if progress.get("held", 0) == 0:
                self.finalize(row, S.CANCELLED)
                return True
            return False
        if progress.get("open", 0) == 0 or row["completed"] + row["failed"] >= row["total"]:
            return self.store.transition(row["id"], S.FINALIZING, self.now())
        if past_window(row["expires_at"], self.clock()) and progress.get("held", 0) == 0:
            self.finalize(row, S.EXPIRED)
            return True
        return False

    # -- validating ---------------------------------------------------------------------------------------
    def _fail(self, row: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        self.store.transition(row["id"], S.FAILED, self.now(), errors={"object": "list", "data": errors})

    async def _validate(self, row: dict[str, Any]) -> None:
        f = await asyncio.to_thread(self.store.get_file, row["input_file_id"], row["owner"])
        found = f is not None and await asyncio.to_thread(self.blobs.exists, f["id"])
        errors = checking.precheck(row, found, self.engine.info.name, self.engine.info.endpoints)
        if errors or f is None:
            self._fail(row, errors)
            return
        path = await asyncio.to_thread(self.blobs.local_path, f["id"])
        try:
            args = (str(path), f["filename"], row["endpoint"], self.engine.info.models, MAX_REPORTED_ERRORS)
            try:
                pool = checking.worker_pool()
                checked = await checking.check(pool, *args)
            except Exception as exc:  # no process (or it died): validate here
                logger.warning("validating on a thread (%s)", exc)
                checked = await asyncio.to_thread(checking.check_file, *args)
            if not checked.ok:
                self._fail(row, checked.errors)
                return
            tokens = await asyncio.to_thread(self._over_quota, row, checked.model, path)
            if tokens is None:
                return
            chunks = await asyncio.to_thread(split_chunks, path, self.chunk_lines)
        finally:
            with contextlib.suppress(AttributeError):
                self.blobs.forget_local(f["id"])
        await asyncio.to_thread(
            self.store.transition,
            row["id"],
            S.IN_PROGRESS,
            self.now(),
            chunks=chunks,
            total=checked.requests,
            model=checked.model,
            enqueued_tokens=tokens,
        )
        self.notify()

    def _over_quota(self, row: dict[str, Any], model: str | None, path: Path) -> int | None:
        """The batch's prompt tokens (0 without a quota), or None once failed for the enqueued-token quota
        (server/admission.py, as the single-process executor; the check is per coordinator, so two
        batches admitted at the same instant on two servers may both pass it)."""
        limit = self.config.enqueued_token_limit
        if limit is None:
            return 0
        total = admission.prompt_tokens(path, row["endpoint"])
        error = admission.over_quota(self.store, model, total, limit)
        if error is not None:
            self._fail(row, [error])
            return None
        return total

    # -- finalizing / expired / cancelled ------------------------------------------------------------------
    def finalize(self, row: dict[str, Any], final: S) -> None:
        with contextlib.suppress(_Superseded):
            self._finalize(row, final)

    def _finalize(self, row: dict[str, Any], final: S) -> None:
        """Stream the log into the output and error files, then register them with the final status in one
        transaction. Deterministic: run again after a crash, it writes the same bytes under the same keys."""
        bid = row["id"]
        out_key, err_key = result_log.file_keys(bid)
        with (
            self._keeping_lease(bid),
            self.blobs.writer(out_key) as out,
            self.blobs.writer(err_key) as err,
        ):
            counts = result_log.write_log(self.store, row, final, out, err, lambda seen: self._never_run(row, seen))
            now = self.store.get_batch(bid, None)
            if now is None or S(now["status"]) in (S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED):
                # another coordinator finished it meanwhile (this one lost its lease): its objects stand; ours,
                # read from a log that may be purged by now, are aborted instead of published over them
                raise _Superseded(bid)
        result_log.publish(self.store, self.blobs, row, final, counts, self.now())

    @contextlib.contextmanager
    def _keeping_lease(self, batch_id: str) -> Iterator[None]:
        """Renew the batch's lease every third of it while a long step (finalizing 50,000 lines) runs, so no
        other coordinator starts the same step meanwhile (harmless, the result is the same, but wasted)."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease / 3):
                with contextlib.suppress(Exception):
                    self.store.lease_batch(batch_id, self.me, self.lease)

        keeper = threading.Thread(target=renew, name=f"lease {batch_id}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join(5)

    def _never_run(self, row: dict[str, Any], seen: set[int]) -> Iterator[str]:
        for n, _, line in blob_lines(self.blobs, row["input_file_id"]):
            if n not in seen and line and not line.isspace():
                yield orjson.loads(line)["custom_id"]


class _Superseded(Exception):
    """A finalize found its batch already final: its uploads are aborted, nothing is published."""
