"""What the single-process executor does when its data disk is full, kept apart from running batches.

A full disk is a state of the server, not an error of one batch: results that cannot be logged stay in
memory and the write is retried with back-off; /health says `full` and since when; once space is back
everything resumes. Only after `disk_full_seconds` without room does the batch fail, with
`insufficient_storage`. On a truly full disk even that small write would fail, so a reserve file is kept
on the data disk and given up for exactly that write. (Scale-out keeps no local data: it has no such
state.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coldbatch.store.space import free_bytes

logger = logging.getLogger(__name__)

#: kept free on the data disk as a file, given up only to record that a batch failed for want of space
#: (on a full disk even that small write would fail)
RESERVE_BYTES = 2 << 20
FIRST_RETRY_SECONDS = 0.25


class DiskRoom:
    """The data disk's state as the executor saw its writes: ok, or full since a monotonic time."""

    def __init__(self, blob_root: Path, *, full_seconds: float, retry_max_seconds: float) -> None:
        self.blob_root = blob_root
        self.full_seconds, self.retry_max_seconds = full_seconds, retry_max_seconds
        self.full_since: float | None = None  #: monotonic time of the first write the full disk refused
        self.reserve = blob_root.parent / "disk-reserve"

    def storage(self) -> dict[str, Any]:
        """For /health: whether writes are being refused for want of space, since when, and what is free."""
        full = self.full_since
        return {
            "status": "full" if full is not None else "ok",
            "free_bytes": free_bytes(self.blob_root),
            "full_for_seconds": round(time.monotonic() - full, 1) if full is not None else None,
        }

    def refused(self, what: str) -> None:
        """A write failed for want of space (logged once per episode)."""
        if self.full_since is None:
            self.full_since = time.monotonic()
            logger.error(
                "disk full (%s free): %s; waiting for space, retrying with back-off",
                f"{free_bytes(self.blob_root):,} bytes",
                what,
            )

    def took(self) -> None:
        """A write went through: if the disk was full, it no longer is (and the reserve is made again)."""
        if self.full_since is not None:
            logger.warning("disk space is back after %.1f s: resuming", time.monotonic() - self.full_since)
            self.full_since = None
            self.keep_reserve()

    def keep_reserve(self) -> None:
        """Best effort: (re)create the reserve file; a disk too full for it goes without."""
        try:
            if not self.reserve.exists():
                self.reserve.write_bytes(bytes(RESERVE_BYTES))
        except OSError:
            self.reserve.unlink(missing_ok=True)

    def give_up_reserve(self) -> None:
        self.reserve.unlink(missing_ok=True)

    def patience_over(self) -> bool:
        """True once writes have been refused for `full_seconds` (the batch should fail)."""
        since = self.full_since if self.full_since is not None else time.monotonic()
        return time.monotonic() - since >= self.full_seconds

    def delays(self) -> Iterator[float]:
        """Back-off between retries: 0.25 s, doubling, up to `retry_max_seconds` (endless; the caller stops)."""
        delay = FIRST_RETRY_SECONDS
        while True:
            yield delay
            delay = min(2 * delay, self.retry_max_seconds)

    def failure(self) -> dict[str, Any]:
        """The batch error recorded when patience is over."""
        minutes = self.full_seconds / 60
        return {
            "code": "insufficient_storage",
            "line": None,
            "param": None,
            "message": f"The server ran out of disk space and could not store this batch's results for {minutes:g} "
            "minutes; the batch was stopped. Create it again once the server has room.",
        }
