"""File bytes in a local folder. Keys are ids the server minted, never user-supplied names, so no
request can reach a path outside the folder. Writes go to `tmp/` and are renamed into place when
complete: a crash leaves either the whole file or nothing."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")


class LocalBlobStore:
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
        tmp = self.root / "tmp" / f"{key}.{os.getpid()}.part"
        fh = tmp.open("wb")
        try:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            tmp.replace(final)
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open(self, key: str) -> IO[bytes]:
        return self.path(key).open("rb")

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def clear_tmp(self) -> None:
        for p in (self.root / "tmp").glob("*.part"):
            p.unlink(missing_ok=True)
