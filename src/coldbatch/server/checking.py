"""Validate an uploaded batch file in a worker process.

Validation is pure CPU over every line. On a thread it would compete for the GIL with the event loop
that drives the running batch (which re-takes the GIL once per row of each SQLite write); a worker
process validates on the other core instead. The result is plain data (picklable); the status
transition stays with the caller.

A file of a megabyte or more is validated in two halves on two workers at once (`check`): while a batch
validates, the server has nothing else to run, and one worker left a core idle for ~40 % of a 50,000-line
batch's wall time. The halves only decide whether the file is clean; when one finds anything wrong (or
the halves disagree: a custom_id in both, two models, a whole-file limit), the file is validated again
in one piece, so an invalid file's errors are exactly those of the one-piece pass.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldbatch.core.validate import FileValidator
from coldbatch.jsonl import iter_lines
from coldbatch.protocol import limits as L


def precheck(
    row: dict[str, Any], file_found: bool, engine_name: str, endpoints: Collection[str]
) -> list[dict[str, Any]]:
    """The batch errors found before a line is read (OpenAI's wording): a file that is gone or another key's, an
    endpoint the engine does not serve. Empty when the file can be validated."""
    if not file_found:
        message = f"Cannot find file {row['input_file_id']}, or you do not have access to it."
        return [{"code": "invalid_request", "line": None, "param": "file_id", "message": message}]
    if row["endpoint"] not in endpoints:
        message = f"This server's engine ({engine_name}) does not serve {row['endpoint']}."
        return [{"code": "invalid_url", "line": None, "param": "endpoint", "message": message}]
    return []


@dataclass(frozen=True)
class Checked:
    ok: bool
    errors: list[dict[str, Any]]
    requests: int
    model: str | None


def _validator(filename: str, endpoint: str, models: Collection[str] | None, max_errors: int) -> FileValidator:
    # an Anthropic Message Batch's own file: its params are checked per request as it runs (errored results)
    return FileValidator(
        file=filename, endpoint=endpoint, models=models, max_errors=max_errors, check_bodies=endpoint != L.MESSAGES
    )


def check_file(path: str, filename: str, endpoint: str, models: Collection[str] | None, max_errors: int) -> Checked:
    v = _validator(filename, endpoint, models, max_errors)
    v.feed_many(iter_lines(Path(path)))
    report = v.finish()
    return Checked(
        report.ok,
        [{"code": e.code, "line": e.line, "param": e.param, "message": e.message} for e in report.errors],
        report.requests,
        report.model,
    )


@dataclass(frozen=True)
class Part:
    """One part of a file, validated alone: enough to tell whether the whole file is clean."""

    ok: bool
    requests: int
    bytes: int
    model: str | None
    custom_ids: list[str]


#: a smaller file is validated in one piece (the second worker's hand-off would cost more than it saves)
SPLIT_BYTES = 1 << 20
#: validation workers: two where there are two cores (a file validates in halves), else one
WORKERS = 2 if (os.cpu_count() or 1) >= 2 else 1


def part_lines(path: str, start: int, end: int) -> Iterator[bytes]:
    """The physical lines of `path` that begin at a byte offset in [start, end), as `iter_lines` gives them:
    consecutive parts cover every line once."""
    with open(path, "rb") as fh:
        pos = start
        if start > 0:
            fh.seek(start - 1)
            pos += len(fh.readline()) - 1  # the rest of the line that began before `start`
        for raw in fh:
            if pos >= end:
                return
            pos += len(raw)
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            yield raw[:-1] if raw.endswith(b"\r") else raw


def check_part(
    path: str, start: int, end: int, filename: str, endpoint: str, models: Collection[str] | None, max_errors: int
) -> Part:
    """Validate the lines that begin in [start, end) (line numbers restart at 1: only `ok` is trusted)."""
    v = _validator(filename, endpoint, models, max_errors)
    v.feed_many(part_lines(path, start, end))
    r = v.report
    return Part(r.ok, r.requests, r.bytes, r.model, v.custom_ids())


def merged(parts: Sequence[Part]) -> Checked | None:
    """The whole file's result when every part is clean and nothing across parts is wrong (a custom_id in
    two parts, two models, a whole-file rule of `FileValidator.finish`); None: validate it in one piece."""
    lim = L.Limits()
    requests, size = sum(p.requests for p in parts), sum(p.bytes for p in parts)
    models = {p.model for p in parts if p.model is not None}
    if not all(p.ok for p in parts) or len(models) > 1 or not 0 < requests <= lim.max_requests or size > lim.max_bytes:
        return None
    ids: set[str] = set()
    for p in parts:
        ids.update(p.custom_ids)
    if len(ids) != sum(len(p.custom_ids) for p in parts):
        return None
    return Checked(True, [], requests, models.pop() if models else None)


async def check(
    pool: ProcessPoolExecutor,
    path: str,
    filename: str,
    endpoint: str,
    models: Collection[str] | None,
    max_errors: int,
    *,
    split_bytes: int = SPLIT_BYTES,
    halves: bool = True,
) -> Checked:
    """`check_file` on the pool's workers: in two halves at once where that pays (see the module's doc), unless
    `halves` is False (the caller's core is busy: a second worker would take it from a running batch)."""
    loop = asyncio.get_running_loop()
    rest = (filename, endpoint, models, max_errors)
    size = os.path.getsize(path)
    # (an embeddings file goes in one piece: its input count is a whole-file rule)
    if halves and WORKERS > 1 and size >= split_bytes and endpoint != L.EMBEDDINGS:
        mid = size // 2
        parts = [loop.run_in_executor(pool, check_part, path, a, b, *rest) for a, b in ((0, mid), (mid, size))]
        whole = merged(await asyncio.gather(*parts))
        if whole is not None:
            return whole
    return await loop.run_in_executor(pool, check_file, path, *rest)


PARENT_CHECK_S = 0.5
_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def ready() -> bool:
    """A no-op run on the worker: submitting it at start-up pays the worker's start (~1 s: it imports
    coldbatch) before the first batch arrives, not inside that batch's completion window."""
    return True


def warm() -> None:
    """Start the validation workers now (`ready` on each), not inside the first batch's validation."""
    pool = worker_pool()
    for _ in range(WORKERS):
        pool.submit(ready)


def worker_pool() -> ProcessPoolExecutor:
    """The process's validation workers, shared by every executor in it; started on first use with
    `spawn` (the server has threads: forking it is unsafe). They exit when the server does, however the
    server ends (a killed parent never tells its pool's workers: see `_exit_with`)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=WORKERS,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with,
                initargs=(os.getpid(),),
            )
        return _pool


def _exit_with(parent: int) -> None:
    """In the worker: exit as soon as `parent` is gone. A worker waits on a queue whose write end it holds
    itself, so it sees no EOF when the server is killed (kill -9, or a SIGTERM that skips the pool's exit
    hook) and would live on, idle, holding ~100 MB."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def discard(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool, so the next call starts a new worker."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)
