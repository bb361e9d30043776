"""Where to cut a stream of request lines into provider-sized files.

The planner sees line sizes batch by batch (never the whole dataset) and answers with cut points, so
`prepare` stays flat in memory however many rows it reads. The rules, in order:
a shard never holds more than `max_requests` lines or `max_bytes` bytes, and never two models.
Greedy filling is deterministic: the same sizes always give the same cuts (byte-identical re-runs).

The rule lives in one method, `ShardPlanner.place` (one line). `cuts` answers the same for a whole
batch with numpy (imported there, so a small job that writes line by line never loads it), and
`LineShards` is the one line-at-a-time file writer: the small-input prepare, the run's send files and
the retry rounds all write through it (issue 11: there were three hand-written copies).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from coldbatch.errors import LineTooLarge

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@dataclass(slots=True)
class ShardPlanner:
    """Stateful greedy planner. Sizes are bytes per line *including* its newline."""

    max_requests: int
    max_bytes: int
    shards: int = 0  #: shards opened so far
    count: int = 0  #: lines in the open shard
    nbytes: int = 0  #: bytes in the open shard
    model: str | None = field(default=None)
    _seen: int = 0

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError("max_requests and max_bytes must be positive")

    def place(self, size: int, model: str) -> bool:
        """THE cut rule, for one line of `size` bytes (newline included): True when the line starts a new
        shard: the first line, a new model, a full shard (`max_requests` lines) or one it would overflow.

        Raises:
            LineTooLarge: the line alone is larger than a shard may be (its 0-based index in the stream).
        """
        new = (
            self.shards == 0
            or model != self.model
            or self.count >= self.max_requests
            or self.nbytes + size > self.max_bytes
        )
        if new:
            if size > self.max_bytes:
                raise LineTooLarge(self._seen, size, self.max_bytes)
            self._open(model)
        self.count += 1
        self.nbytes += size
        self._seen += 1
        return new

    def cuts(self, sizes: npt.NDArray[np.int64], model: str) -> list[int]:
        """Return the indices into `sizes` at which a new shard starts (0 included when it does): what
        `place` answers line by line, found for a whole batch with two numpy searches per shard."""
        import numpy as np  # only the columnar prepare hands over whole batches

        out: list[int] = []
        n = len(sizes)
        if n and (self.shards == 0 or model != self.model):
            out.append(0)
            self._open(model)
        cum = np.cumsum(sizes, dtype=np.int64)
        i = 0
        while i < n:
            base = int(cum[i - 1]) if i else 0
            room_req = self.max_requests - self.count
            room_bytes = self.max_bytes - self.nbytes
            fit_bytes = int(np.searchsorted(cum, base + room_bytes, side="right")) - i
            take = min(room_req, fit_bytes, n - i)
            if take <= 0:
                if self.count == 0:
                    raise LineTooLarge(self._seen + i, int(sizes[i]), self.max_bytes)
                out.append(i)
                self._open(model)
                continue
            self.count += take
            self.nbytes += int(cum[i + take - 1]) - base
            i += take
            if i < n and (self.count >= self.max_requests or self.nbytes >= self.max_bytes):
                out.append(i)
                self._open(model)
        self._seen += n
        return out

    def _open(self, model: str) -> None:
        self.shards += 1
        self.count = 0
        self.nbytes = 0
        self.model = model


@dataclass(slots=True)
class ShardInfo:
    """One written file: its name in the folder, model, size, hash and the rows (or lines) it holds."""

    path: str
    model: str
    requests: int = 0
    bytes: int = 0
    first_row: int = 0
    last_row: int = 0
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model": self.model,
            "requests": self.requests,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "first_row": self.first_row,
            "last_row": self.last_row,
        }


class LineShards:
    """Write lines one at a time into `folder/pattern.format(n)` files (n from 1), cut by `ShardPlanner.place`.

    Each file's sha256 is taken as it is written, so nothing is read back. `close()` (also on error)
    closes the open file; `shards` then describes every file written.
    """

    def __init__(self, folder: Path, pattern: str, max_requests: int, max_bytes: int) -> None:
        self.folder, self.pattern = folder, pattern
        self.planner = ShardPlanner(max_requests, max_bytes)
        self.shards: list[ShardInfo] = []
        self._fh: IO[bytes] | None = None
        self._hash: Any = None

    def add(self, data: bytes, model: str, row: int = 0) -> ShardInfo:
        """Append `data` (one line, newline included); returns the file it went into. `row`: the line's
        row number, kept as the file's first/last row."""
        if self.planner.place(len(data), model):
            self._finish()
            info = ShardInfo(self.pattern.format(len(self.shards) + 1), model, first_row=row)
            self.shards.append(info)
            self._fh = (self.folder / info.path).open("wb")
            self._hash = hashlib.sha256()
        assert self._fh is not None
        self._fh.write(data)
        self._hash.update(data)
        info = self.shards[-1]
        info.requests += 1
        info.bytes += len(data)
        info.last_row = row
        return info

    def _finish(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self.shards[-1].sha256 = self._hash.hexdigest()

    def close(self) -> list[ShardInfo]:
        """Close the open file (its hash is final); the files written, in order."""
        self._finish()
        return self.shards
