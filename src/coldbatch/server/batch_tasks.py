"""One asyncio task per unfinished batch, the loop shape both batch drivers share (the single-process
executor and the scale-out coordinator).

Each pass of a driver's main loop hands `start` the unfinished batches; a batch without a task gets one,
which drives it until it is terminal (or, in scale-out, until another process holds its lease). A drive
that raises never takes the server down: the driver's `on_error` says what to do (log it, back off), the
task ends, and the next pass starts a new one, so every batch is retried from what the store says. Only
the driver decides what an error means (a full disk is not a bug); the bookkeeping is the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any


class BatchTasks:
    """The driving tasks by batch id: started once per batch, forgotten when they end, cancelled on close."""

    def __init__(
        self,
        drive: Callable[[str], Awaitable[None]],
        on_error: Callable[[str, Exception], Awaitable[None]],
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        self.drive, self.on_error, self.on_end = drive, on_error, on_end
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, rows: Iterable[dict[str, Any]]) -> None:
        """A task for each of these batches that has none."""
        for row in rows:
            bid = row["id"]
            if bid not in self._tasks:
                self._tasks[bid] = asyncio.create_task(self._drive_safely(bid), name=f"batch {bid}")

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _drive_safely(self, batch_id: str) -> None:
        try:
            await self.drive(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.on_error(batch_id, exc)
        finally:
            self._tasks.pop(batch_id, None)
            if self.on_end is not None:
                self.on_end(batch_id)


async def nap(wake: asyncio.Event, seconds: float) -> None:
    """Wait until `wake` is set (a notify: a new batch, a cancel) or `seconds` pass, whichever is first."""
    wake.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)
