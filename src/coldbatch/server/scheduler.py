"""Engine slots shared by hot (sync API) and cold (batch) work: hot requests always go first.

The engine can take `capacity` requests at once. A batch executor asks for slots at COLD priority, the
synchronous endpoints at HOT; whenever a slot frees, the oldest HOT waiter gets it before any COLD one,
so batch work only ever fills idle capacity.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

HOT, COLD = 0, 1


class Slots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        #: called with (priority, seconds waited) for every slot granted (the server's /metrics)
        self.on_wait: Callable[[int, float], None] | None = None

    def waiting(self, priority: int) -> int:
        """Waiters of this priority (a copy is read: /metrics calls this from another thread)."""
        return sum(1 for p, _, f in list(self._waiters) if p == priority and not f.done())

    @property
    def hot_waiting(self) -> int:
        return self.waiting(HOT)

    async def acquire(self, priority: int) -> None:
        if self.in_use < self.capacity and not any(not f.done() for *_, f in self._waiters):
            self.in_use += 1
            if self.on_wait is not None:
                self.on_wait(priority, 0.0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        started = time.monotonic()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were granted the slot as we got cancelled: hand it on
            raise
        if self.on_wait is not None:
            self.on_wait(priority, time.monotonic() - started)

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the waiter
                return
        self.in_use -= 1

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()
