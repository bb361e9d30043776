"""The Engine protocol: one small async interface every backend implements.

An engine answers one request at a time from the server's point of view (`complete`), but may batch
internally (llama.cpp decodes several sequences together). Per-request failures are *results*
(`Result(status_code=4xx/5xx, body={"error": ...})`), not exceptions; an exception from `complete`
means the engine itself is broken and the request will be retried after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from coldbatch.protocol.lines import Result, error_result  # noqa: F401  (the wire types; engines import them here)

#: True inside an engine worker process (`engines/worker.py`): fixture switches that kill the process
#: (the echo engine's `echo_crash`) only work there, never in a server that holds other work.
IN_WORKER_PROCESS = False

#: True in a batch executor lane (it sets it): its CPU-bound steps take turns through `cpu_turn`
BACKGROUND: ContextVar[bool] = ContextVar("coldbatch_background", default=False)
_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def cpu_turn() -> AsyncIterator[None]:
    """Run one CPU-bound step of batch work (an in-process engine's answers, a lane's results) alone in its
    event-loop turn; outside a batch lane (hot requests) this waits for nothing.

    Why: when a batch is CPU-bound, every lane is ready at every turn, so one turn ran all of them (8 lanes x 32
    echo requests, ~60 ms on a busy core) before the loop read its sockets again, and a poll needs several
    turns (read, handle, write): p99 0.4-0.9 s under load (issue 15, item 6). A step holds a FIFO lock that is
    released by the loop's next turn (a step itself never suspends, so releasing at its end would let every
    lane through in the same turn), and the lane it wakes runs the turn after: between two steps the loop
    polls its sockets and runs what they brought. The batch's own work is the same, in the same order."""
    if not BACKGROUND.get():
        yield
        return
    loop = asyncio.get_running_loop()
    lock = _TURNS.get(loop)
    if lock is None:
        lock = _TURNS[loop] = asyncio.Lock()
    await lock.acquire()
    try:
        yield
    finally:
        loop.call_soon(lock.release)


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    endpoints: frozenset[str]  #: e.g. {"/v1/chat/completions"}
    models: frozenset[str] | None  #: model names served; None = any name (the engine ignores it)
    max_concurrency: int = 1  #: requests worth having in flight at once
    fixture: bool = False  #: True for test/benchmark engines (echo): never a real model
    #: ((endpoint, n), ...): endpoints worth more requests in flight than `max_concurrency`, e.g. embeddings
    #: that the engine packs into one model call while its chat requests run one at a time
    endpoint_concurrency: tuple[tuple[str, int], ...] = ()

    def concurrency(self, endpoint: str) -> int:
        """Requests worth having in flight at once for `endpoint`."""
        return dict(self.endpoint_concurrency).get(endpoint, self.max_concurrency)

    @property
    def most_concurrency(self) -> int:
        """The largest in-flight count any endpoint wants (the size of the server's shared slots)."""
        return max([self.max_concurrency, *(n for _, n in self.endpoint_concurrency)])


class Engine(Protocol):
    info: EngineInfo

    async def complete(self, endpoint: str, body: dict[str, Any]) -> Result:
        """Answer one request body for `endpoint` (as the synchronous OpenAI endpoint would)."""
        ...

    async def aclose(self) -> None: ...


def settle_from_thread(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: object | BaseException
) -> None:
    """Resolve `future` (owned by `loop`) from another thread: its result, or the exception to raise.
    A future already done (cancelled) is left alone; a closed loop means nobody waits anymore."""

    def settle() -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
