"""In-memory `ServerStore` and `BlobStore`: the reference fakes every backend is compared with.

They keep the same promises as SQLite and the folder (compare-and-set transitions with events, a
results log counted once per line, atomic blob publish) with a lock instead of transactions, so the
contract suite (tests/store/) runs each test against them and against every real backend alike, and
code above the store can be tested without a file. Nothing survives the process.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from coldbatch.core.status import TERMINAL, TIMESTAMP_FIELD, BatchStatus, allowed_from
from coldbatch.store.records import LoggedRow, ResultRow, Row

__all__ = ["MemoryBlobStore", "MemoryServerStore"]

_TERMINAL = frozenset(s.value for s in TERMINAL)
_LOGGING = frozenset({BatchStatus.IN_PROGRESS.value, BatchStatus.CANCELLING.value})
#: every column of a batch row and its default (store/migrations/0001_init.sql)
_BATCH_DEFAULTS: dict[str, Any] = {
    "model": None,
    "output_file_id": None,
    "error_file_id": None,
    "in_progress_at": None,
    "finalizing_at": None,
    "completed_at": None,
    "failed_at": None,
    "expired_at": None,
    "cancelling_at": None,
    "cancelled_at": None,
    "total": 0,
    "completed": 0,
    "failed": 0,
    "input_tokens": 0,
    "cached_tokens": 0,
    "output_tokens": 0,
    "errors": None,
    "metadata": None,
    "output_ttl": None,
    "enqueued_tokens": 0,
}
_BATCH_REQUIRED = (
    "id",
    "owner",
    "endpoint",
    "input_file_id",
    "completion_window",
    "status",
    "created_at",
    "expires_at",
)
_FILE_REQUIRED = ("id", "owner", "filename", "purpose", "bytes", "created_at")


class MemoryServerStore:
    """Dicts behind one lock; `seq` counters per table, as SQLite's AUTOINCREMENT."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._files: dict[str, Row] = {}
        self._batches: dict[str, Row] = {}
        self._events: list[tuple[str, str | None, str, int]] = []
        self._results: dict[str, dict[int, LoggedRow]] = {}
        self._file_seq = itertools.count(1)
        self._batch_seq = itertools.count(1)

    def migrate(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    # -- files ----------------------------------------------------------------------------------------
    def create_file(self, row: Row) -> None:
        with self._lock:
            if row["id"] in self._files:
                raise ValueError(f"file {row['id']!r} exists already")
            self._put_file(row)

    def _put_file(self, row: Row) -> None:
        missing = [k for k in _FILE_REQUIRED if row.get(k) is None]
        if missing:
            raise ValueError(f"file {row.get('id')!r}: {', '.join(missing)} may not be empty")
        self._files[row["id"]] = {
            "seq": next(self._file_seq),
            "id": row["id"],
            "owner": row["owner"],
            "filename": row["filename"],
            "purpose": row["purpose"],
            "bytes": row["bytes"],
            "created_at": row["created_at"],
            "expires_at": row.get("expires_at"),
            "status": "processed",
            "deleted": 0,
        }

    def get_file(self, file_id: str, owner: str | None) -> Row | None:
        with self._lock:
            f = self._files.get(file_id)
            if f is None or f["deleted"] or (owner is not None and f["owner"] != owner):
                return None
            return dict(f)

    def list_files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> tuple[list[Row], bool]:
        desc = order == "desc"
        with self._lock:
            rows = [
                f
                for f in self._files.values()
                if f["owner"] == owner and not f["deleted"] and (not purpose or f["purpose"] == purpose)
            ]
            if after:
                mark = self._files[after]["seq"] if after in self._files else (-1 if desc else 1 << 62)
                rows = [f for f in rows if (f["seq"] < mark if desc else f["seq"] > mark)]
            rows.sort(key=lambda f: f["seq"], reverse=desc)
            return [dict(f) for f in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self._lock:
            f = self._files.get(file_id)
            if f is None or f["owner"] != owner or f["deleted"]:
                return False
            f["deleted"] = 1
            return True

    def expired_files(self, now: int) -> list[str]:
        with self._lock:
            return [
                f["id"]
                for f in self._files.values()
                if not f["deleted"] and f["expires_at"] is not None and f["expires_at"] <= now
            ]

    def forget_file(self, file_id: str) -> None:
        with self._lock:
            if file_id in self._files:
                self._files[file_id]["deleted"] = 1

    # -- batches --------------------------------------------------------------------------------------
    def create_batch(self, row: Row) -> None:
        with self._lock:
            missing = [k for k in _BATCH_REQUIRED if row.get(k) is None]
            if missing or row["id"] in self._batches:
                raise ValueError(f"batch {row.get('id')!r}: missing {missing} or exists already")
            values = {k: _db_value(row.get(k, v)) for k, v in _BATCH_DEFAULTS.items()}
            self._batches[row["id"]] = {"seq": next(self._batch_seq), **{k: row[k] for k in _BATCH_REQUIRED}, **values}
            self._events.append((row["id"], None, row["status"], row["created_at"]))

    def get_batch(self, batch_id: str, owner: str | None) -> Row | None:
        with self._lock:
            b = self._batches.get(batch_id)
            return dict(b) if b is not None and (owner is None or b["owner"] == owner) else None

    def list_batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[Row], bool]:
        with self._lock:
            rows = [b for b in self._batches.values() if b["owner"] == owner]
            if after:
                a = self._batches.get(after)
                mark = a["seq"] if a is not None and a["owner"] == owner else -1
                rows = [b for b in rows if b["seq"] < mark]
            rows.sort(key=lambda b: b["seq"], reverse=True)
            return [dict(b) for b in rows[:limit]], len(rows) > limit

    def delete_batch(self, batch_id: str, owner: str) -> bool:
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None or b["owner"] != owner or b["status"] not in _TERMINAL:
                return False
            del self._batches[batch_id]
            self._events = [e for e in self._events if e[0] != batch_id]
            return True

    def unfinished_batches(self) -> list[Row]:
        with self._lock:
            return [
                dict(b) for b in sorted(self._batches.values(), key=lambda b: b["seq"]) if b["status"] not in _TERMINAL
            ]

    def transition(self, batch_id: str, to: BatchStatus, now: int, *, files: Sequence[Row] = (), **fields: Any) -> bool:
        """Compare-and-set under the lock; files and fields are checked before anything changes."""
        unknown = set(fields) - set(_BATCH_DEFAULTS)
        if unknown:
            raise ValueError(f"transition: no batch column {sorted(unknown)}")
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None or BatchStatus(b["status"]) not in allowed_from(to):
                return False
            for f in files:
                missing = [k for k in _FILE_REQUIRED if f.get(k) is None]
                if missing:
                    raise ValueError(f"file {f.get('id')!r}: {', '.join(missing)} may not be empty")
            for f in files:
                self._files.pop(f["id"], None)  # INSERT OR REPLACE: a new row, a new seq
                self._put_file(f)
            frm = b["status"]
            b.update({k: _db_value(v) for k, v in fields.items()}, status=to.value)
            if to in TIMESTAMP_FIELD:
                b[TIMESTAMP_FIELD[to]] = now
            self._events.append((batch_id, frm, to.value, now))
            return True

    def events(self, batch_id: str) -> list[tuple[str | None, str]]:
        with self._lock:
            return [(frm, to) for bid, frm, to, _ in self._events if bid == batch_id]

    def event_log(self, batch_id: str) -> list[Row]:
        with self._lock:
            return [
                {"from_status": frm, "to_status": to, "at": at} for bid, frm, to, at in self._events if bid == batch_id
            ]

    # -- dashboard and metrics ------------------------------------------------------------------------
    def batch_page(self, owner: str | None, *, offset: int, limit: int, status: str | None = None) -> list[Row]:
        with self._lock:
            rows = [
                b
                for b in self._batches.values()
                if (owner is None or b["owner"] == owner) and (status is None or b["status"] == status)
            ]
            rows.sort(key=lambda b: b["seq"], reverse=True)
            return [dict(b) for b in rows[offset : offset + limit]]

    def file_page(self, owner: str | None, *, offset: int, limit: int) -> list[Row]:
        with self._lock:
            rows = [f for f in self._files.values() if not f["deleted"] and (owner is None or f["owner"] == owner)]
            rows.sort(key=lambda f: f["seq"], reverse=True)
            return [dict(f) for f in rows[offset : offset + limit]]

    def batch_status_counts(self, owner: str | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for b in self._batches.values():
                if owner is None or b["owner"] == owner:
                    counts[b["status"]] = counts.get(b["status"], 0) + 1
        return counts

    def failed_results(self, batch_id: str, limit: int) -> list[LoggedRow]:
        with self._lock:
            log = self._results.get(batch_id, {})
            return [log[n] for n in sorted(log) if not log[n][2]][:limit]

    def batch_totals(self, buckets: Sequence[float], *, after: int = 0, upto: int | None = None) -> list[Row]:
        top = (1 << 62) if upto is None else upto
        groups: dict[tuple[str, str, str], Row] = {}
        with self._lock:
            for b in self._batches.values():
                if not after < b["seq"] <= top:
                    continue
                key = (b["endpoint"], b["model"] or "", b["status"])
                g = groups.setdefault(
                    key,
                    {
                        "endpoint": key[0],
                        "model": key[1],
                        "status": key[2],
                        "batches": 0,
                        "completed": 0,
                        "failed": 0,
                        "input_tokens": 0,
                        "cached_tokens": 0,
                        "output_tokens": 0,
                        "ended": 0,
                        "duration": 0,
                        **{f"le{i}": 0 for i in range(len(buckets))},
                    },
                )
                g["batches"] += 1
                for col in ("completed", "failed", "input_tokens", "cached_tokens", "output_tokens"):
                    g[col] += b[col]
                d = _duration(b)
                if d is not None:
                    g["ended"] += 1
                    g["duration"] += d
                    for i, edge in enumerate(buckets):
                        g[f"le{i}"] += d <= float(edge)
        return list(groups.values())

    def settled_seq(self) -> int:
        with self._lock:
            live = [b["seq"] for b in self._batches.values() if b["status"] not in _TERMINAL]
            if live:
                return int(min(live) - 1)
            return max((b["seq"] for b in self._batches.values()), default=0)

    def upload_totals(self, after: int = 0) -> tuple[list[tuple[str, int, int]], int]:
        with self._lock:
            upto = max((f["seq"] for f in self._files.values()), default=0)
            totals: dict[str, list[int]] = {}
            for f in self._files.values():
                if f["purpose"] != "batch_output" and after < f["seq"] <= upto:
                    t = totals.setdefault(f["purpose"], [0, 0])
                    t[0] += 1
                    t[1] += f["bytes"]
        return [(p, n, size) for p, (n, size) in sorted(totals.items())], upto

    # -- the results log ------------------------------------------------------------------------------
    def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        with self._lock:
            b = self._batches.get(batch_id)
            if b is None or b["status"] not in _LOGGING:
                return 0
            log = self._results.setdefault(batch_id, {})
            fresh = []
            for cid, line, ok, data, tin, tcached, tout in rows:
                if line not in log:
                    log[line] = (cid, line, bool(ok), bytes(data))
                    fresh.append((ok, tin, tcached, tout))
            ok_n = sum(1 for r in fresh if r[0])
            b["completed"] += ok_n
            b["failed"] += len(fresh) - ok_n
            b["input_tokens"] += sum(r[1] for r in fresh)
            b["cached_tokens"] += sum(r[2] for r in fresh)
            b["output_tokens"] += sum(r[3] for r in fresh)
            return len(fresh)

    def enqueued_tokens(self, model: str | None) -> int:
        with self._lock:
            return sum(
                b["enqueued_tokens"]
                for b in self._batches.values()
                if b["model"] == model and b["status"] in ("in_progress", "finalizing")
            )

    def done_lines(self, batch_id: str) -> set[int]:
        with self._lock:
            return set(self._results.get(batch_id, ()))

    def iter_results(self, batch_id: str) -> Iterator[LoggedRow]:
        with self._lock:
            log = self._results.get(batch_id, {})
            rows = [log[n] for n in sorted(log)]
        yield from rows

    def purge_results(self, batch_id: str, chunk: int = 2048) -> int:
        with self._lock:
            b = self._batches.get(batch_id)
            if b is not None and b["status"] not in _TERMINAL:
                return 0
            return len(self._results.pop(batch_id, {}))

    def finished_logs(self) -> list[str]:
        with self._lock:
            return [
                bid
                for bid, log in self._results.items()
                if log and (bid not in self._batches or self._batches[bid]["status"] in _TERMINAL)
            ]

    def blob_owners(self) -> tuple[set[str], set[str]]:
        with self._lock:
            live = {f["id"] for f in self._files.values() if not f["deleted"]}
            in_use = {b["input_file_id"] for b in self._batches.values() if b["status"] not in _TERMINAL}
        return live, in_use


class MemoryBlobStore:
    """Bytes in a dict; a writer publishes on a clean exit. `local_path` writes a copy into a private
    temporary folder (for readers that need a real file), as a remote store keeps a local copy."""

    _KEY = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="coldbatch-blobs-"))
        weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)  # the copies go with the store

    def _check(self, key: str) -> str:
        if not self._KEY.match(key):
            raise ValueError(f"bad blob key {key!r}")
        return key

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        self._check(key)
        buf = io.BytesIO()
        yield buf
        with self._lock:
            self._blobs[key] = (buf.getvalue(), time.time())

    def open(self, key: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        with self._lock:
            if self._check(key) not in self._blobs:
                raise FileNotFoundError(key)
            data = self._blobs[key][0]
        return io.BytesIO(data[start:end])

    def iter_chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as fh:
            while block := fh.read(size):
                yield block

    def local_path(self, key: str) -> Path:
        path = self._dir / self._check(key)
        with self._lock:
            data = self._blobs.get(key)
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(data[0])
        return path

    @property
    def local_root(self) -> Path:
        return self._dir

    def size(self, key: str) -> int:
        with self._lock:
            if self._check(key) not in self._blobs:
                raise FileNotFoundError(key)
            return len(self._blobs[key][0])

    def exists(self, key: str) -> bool:
        with self._lock:
            return self._check(key) in self._blobs

    def mtime(self, key: str) -> float:
        with self._lock:
            if self._check(key) not in self._blobs:
                raise FileNotFoundError(key)
            return self._blobs[key][1]

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(self._check(key), None)

    def stored_keys(self) -> list[str]:
        with self._lock:
            return list(self._blobs)

    def clear_tmp(self) -> None:
        pass


def _duration(b: Row) -> int | None:
    """Seconds from creation to the terminal status (None while not terminal)."""
    if b["status"] not in _TERMINAL:
        return None
    ended = next((b[c] for c in ("completed_at", "failed_at", "expired_at", "cancelled_at") if b[c] is not None), None)
    return None if ended is None else int(ended - b["created_at"])


def _db_value(v: Any) -> Any:
    """As SQLite stores it: a dict or list becomes JSON text."""
    return orjson.dumps(v).decode() if isinstance(v, dict | list) else v
