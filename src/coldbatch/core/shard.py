"""Where to cut a stream of request lines into provider-sized files.

The planner sees line sizes batch by batch (never the whole dataset) and answers with cut points, so
`prepare` stays flat in memory however many rows it reads. The rules, in order:
a shard never holds more than `max_requests` lines or `max_bytes` bytes, and never two models.
Greedy filling is deterministic: the same sizes always give the same cuts (byte-identical re-runs).

The rule lives in one method, `ShardPlanner.place` (one line). `cuts` answers the same for a whole
batch with numpy (imported there, so a small job that writes line by line never loads it). The files
are written by `builder.write`: `ShardWriter` for the columnar prepare's batches, `LineShards` line by
line for the small-input prepare, the run's send files and the retry rounds (issue 11: those were three
hand-written copies of the rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
