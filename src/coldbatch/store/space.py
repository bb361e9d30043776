"""Telling "the disk is full" apart from other storage errors, and how much room is left.

A full disk is the server's condition, not the client's mistake and not a bug: uploads answer 507 (the
client retries later) and a running batch waits for room instead of failing (see the executor).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

_FULL = (errno.ENOSPC, errno.EDQUOT)
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that only means "no space left" (file writes, fsync, or SQLite's commit)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # also when wrapped (raise ... from exc)
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
