"""File bytes in a local folder. Keys are ids the server minted, never user-supplied names, so no
request can reach a path outside the folder. Writes go to `tmp/` under a name no other writer uses,
are fsynced, and are renamed into place when complete (then the folder is fsynced, so the rename
itself is durable): a crash leaves either the whole file or nothing under the key, plus perhaps a
`tmp/*.part` that `clear_tmp` removes at the next start."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from coldbatch.store.interfaces import BlobStore, ServerStore

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")
_WRITER = itertools.count()


def remove_orphans(store: ServerStore, blobs: BlobStore, published_before: float) -> None:
    """Delete blobs no file row owns (result files of a finalize that never committed, uploads that never
    got their row, deleted files no unfinished batch reads), but only those published before
    `published_before` (epoch seconds): a newer one may be an upload whose row is still being written.
    One function for the single-process recovery and the scale-out sweep, which differ only in that
    cutoff, so the rule for what is garbage cannot drift between them."""
    live, in_use = store.blob_owners()
    for key in blobs.stored_keys():
        if key not in live and key not in in_use:
            with contextlib.suppress(FileNotFoundError):  # another process removed it meanwhile
                if blobs.mtime(key) < published_before:
                    blobs.delete(key)
                    logger.info("removed orphan blob %s", key)


class LocalBlobStore:
    """`store.interfaces.BlobStore` in a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Write a blob; it appears under `key` only if the block finishes without error."""
        final = self.path(key)
        tmp = self.root / "tmp" / f"{key}.{os.getpid()}.{next(_WRITER)}.part"
        fh = tmp.open("xb")
        try:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            tmp.replace(final)
            self._sync_dir()
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise

    def _sync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def stored_keys(self) -> list[str]:
        """Every stored key (in-progress writes under `tmp/` excluded)."""
        return [p.name for p in self.root.iterdir() if p.is_file() and _KEY.match(p.name)]

    def mtime(self, key: str) -> float:
        return self.path(key).stat().st_mtime

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open(self, key: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        """The blob's bytes from `start` (`end` is the caller's to respect: a remote store uses it for a
        range request, a local file just stops being read)."""
        fh = self.path(key).open("rb")
        if start:
            fh.seek(start)
        return fh

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def local_path(self, key: str) -> Path:
        """The blob's own file (a remote store returns a local copy)."""
        return self.path(key)

    @property
    def local_root(self) -> Path:
        """The folder itself: disk-space checks watch its filesystem."""
        return self.root

    def iter_chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        """The blob's bytes in blocks of `size`, read as they are sent."""
        with self.open(key) as fh:
            while block := fh.read(size):
                yield block

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def clear_tmp(self) -> None:
        """Remove writes a crash interrupted. Call only while no writer is active (at start)."""
        for p in (self.root / "tmp").glob("*.part"):
            p.unlink(missing_ok=True)
