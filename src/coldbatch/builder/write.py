"""Write shards and `manifest.json` atomically: a failed or interrupted prepare leaves `--out` as it was.

Shards are built in a sibling temp folder and swapped in at the end. Nothing time- or host-dependent
goes into the files, so the same input and options give byte-identical shards and manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from coldbatch.core.shard import ShardPlanner
from coldbatch.errors import InputError

if TYPE_CHECKING:
    from coldbatch.builder.build import Built


MANIFEST = "manifest.json"
MANIFEST_FORMAT = "coldbatch.manifest/1"
REJECTS = "rejects.jsonl"
_OWN_FILES = re.compile(r"manifest\.json|rejects\.jsonl|shard-\d{5,}\.jsonl|\.DS_Store")  # what a re-run may replace


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


class ShardWriter:
    """Append built batches; cuts follow `ShardPlanner`.

    File writes and hashing run on one background thread (both release the GIL), overlapping with the
    next batch's build; at most two batches are in flight, so memory stays bounded.
    """

    def __init__(self, folder: Path, planner: ShardPlanner) -> None:
        self.folder = folder
        self.planner = planner
        self.shards: list[ShardInfo] = []
        self._fh: IO[bytes] | None = None
        self._hash: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._inflight: deque[Future[None]] = deque()

    def add(self, built: Built, model: str) -> None:
        import numpy as np  # the columnar path's; the small-input path writes through core.shard.LineShards

        arr = built.lines
        n = len(arr)
        if n == 0:
            return
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + arr.offset + 1)[arr.offset :]
        data = memoryview(arr.buffers()[2])  # type: ignore[arg-type]
        cuts = self.planner.cuts(np.diff(offsets), model)
        starts = set(cuts)
        ops: list[tuple[ShardInfo | None, memoryview]] = []
        for lo, hi in pairwise(sorted({0, *cuts, n})):
            info = None
            if lo in starts:
                info = ShardInfo(
                    path=f"shard-{len(self.shards) + 1:05d}.jsonl", model=model, first_row=int(built.rows[lo])
                )
                self.shards.append(info)
            current = self.shards[-1]
            current.requests += hi - lo
            current.bytes += int(offsets[hi] - offsets[lo])
            current.last_row = int(built.rows[hi - 1])
            ops.append((info, data[int(offsets[lo]) : int(offsets[hi])]))
        while len(self._inflight) >= 2:
            self._inflight.popleft().result()
        self._inflight.append(self._pool.submit(self._apply, ops, arr))

    def _apply(self, ops: list[tuple[ShardInfo | None, memoryview]], _keepalive: object) -> None:
        for info, chunk in ops:
            if info is not None:
                self._finish_file()
                self._fh = (self.folder / info.path).open("wb")
                self._hash = hashlib.sha256()
                self._open_info = info
            assert self._fh is not None
            self._fh.write(chunk)
            self._hash.update(chunk)

    def _finish_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._open_info.sha256 = self._hash.hexdigest()
            self._fh = None

    def close(self) -> None:
        """Wait for pending writes, close the last file; re-raises a write error."""
        try:
            while self._inflight:
                self._inflight.popleft().result()
            self._pool.submit(self._finish_file).result()
        finally:
            self._pool.shutdown(wait=True)


def _is_ours(manifest: Path) -> bool:
    try:
        data = orjson.loads(manifest.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(data, dict) and str(data.get("format", "")).startswith("coldbatch.manifest/")


def check_replaceable(out: Path) -> None:
    """Refuse an `--out` that holds anything but an earlier prepare's output: replacing it would delete it.

    Raises:
        InputError: `out` is a file, or a folder with other files in it.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not _is_ours(out / MANIFEST):
        raise InputError(f"{out}: folder is not empty and holds no coldbatch manifest; choose another --out")
    foreign = sorted(p.name for p in out.iterdir() if not _OWN_FILES.fullmatch(p.name))
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise InputError(
            f"{out}: holds files that prepare did not write ({', '.join(foreign[:5])}{more}), and "
            "re-preparing replaces the whole folder; move them or choose another --out"
        )


def staging_folder(out: Path) -> Path:
    """A fresh sibling folder to build in (same filesystem, so the final rename is atomic)."""
    out = out.resolve()
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Swap the finished staging folder into place."""
    out = out.resolve()
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    path.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")


def write_rejects(path: Path, rejects: list[Any]) -> None:
    """One JSON line per rejected row, in row order."""
    with path.open("wb") as fh:
        for r in sorted(rejects, key=lambda r: r.line):
            fh.write(orjson.dumps(r.to_json()) + b"\n")
