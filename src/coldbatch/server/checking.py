"""Validate an uploaded batch file in a worker process.

Validation is pure CPU over every line. On a thread it would compete for the GIL with the event loop
that drives the running batch (which re-takes the GIL once per row of each SQLite write); a worker
process validates on the other core instead. The result is plain data (picklable); the status
transition stays with the caller.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldbatch.core.validate import FileValidator
from coldbatch.protocol import limits as L
from coldbatch.validation import iter_lines


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


def check_file(path: str, filename: str, endpoint: str, models: Collection[str] | None, max_errors: int) -> Checked:
    # an Anthropic Message Batch's own file: its params are checked per request as it runs (errored results)
    v = FileValidator(
        file=filename, endpoint=endpoint, models=models, max_errors=max_errors, check_bodies=endpoint != L.MESSAGES
    )
    v.feed_many(iter_lines(Path(path)))
    report = v.finish()
    return Checked(
        report.ok,
        [{"code": e.code, "line": e.line, "param": e.param, "message": e.message} for e in report.errors],
        report.requests,
        report.model,
    )


PARENT_CHECK_S = 0.5
_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def ready() -> bool:
    """A no-op run on the worker: submitting it at start-up pays the worker's start (~1 s: it imports
    coldbatch) before the first batch arrives, not inside that batch's completion window."""
    return True


def worker_pool() -> ProcessPoolExecutor:
    """The process's one validation worker, shared by every executor in it; started on first use with
    `spawn` (the server has threads: forking it is unsafe). It exits when the server does, however the
    server ends (a killed parent never tells its pool's workers: see `_exit_with`)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=1,
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
