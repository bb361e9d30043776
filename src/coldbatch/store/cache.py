"""The result cache across jobs: one answer per distinct question, reused by every later job.

Content-addressed by `core.canonical.request_key` in `$COLDBATCH_HOME/cache.sqlite3` (behind
`store.interfaces.CacheStore`; schema in `store/migrations/cache/`). An entry is
written only after its result was collected from a completed batch and parsed; each entry stores a
SHA-256 of its payload, and an entry whose payload no longer matches (disk corruption, a hand edit)
is ignored and deleted, never returned. Limits: a maximum number of entries and a maximum age;
the oldest entries go first (`prune`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from coldbatch.store import sqlite_db
from coldbatch.store.records import Entry

__all__ = ["Entry", "ResultCache"]

#: the cache schema's migrations (`store/sqlite_db.py` applies them)
MIGRATIONS = "coldbatch.store.migrations.cache"


def _checksum(key: str, content: str, prompt: int, completion: int, confidence: float | None = None) -> str:
    """SHA-256 of an entry; an entry without a confidence sums as entries made before that column existed."""
    extra = "" if confidence is None else f"\0{confidence!r}"
    return hashlib.sha256(f"{key}\0{content}\0{prompt}\0{completion}{extra}".encode()).hexdigest()


class ResultCache:
    def __init__(self, path: Path, *, max_entries: int | None = None, max_age_days: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_entries = max_entries
        self.max_age = max_age_days * 86400 if max_age_days else None
        self.db = sqlite_db.connect(path, row_factory=False)
        sqlite_db.migrate(self.db, MIGRATIONS)
        self.corrupt_ignored = 0

    def close(self) -> None:
        self.db.close()

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Valid, unexpired entries for these keys; corrupted ones are dropped."""
        found: dict[str, Entry] = {}
        bad: list[str] = []
        oldest = int(time.time() - self.max_age) if self.max_age else 0
        for i in range(0, len(keys), 500):
            part = list(keys[i : i + 500])
            rows = self.db.execute(
                f"SELECT key, content, prompt_tokens, completion_tokens, created_at, checksum, confidence FROM "
                f"entries WHERE key IN ({', '.join('?' * len(part))})",
                part,
            )
            for key, content, p, c, created, checksum, confidence in rows:
                if checksum != _checksum(key, content, p, c, confidence):
                    bad.append(key)
                elif created >= oldest:
                    found[key] = Entry(key, content, p, c, confidence)
        if bad:
            self.corrupt_ignored += len(bad)
            self.db.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in bad])
        return found

    def put_many(self, entries: Iterable[Entry]) -> int:
        now = int(time.time())
        rows = [
            (
                e.key,
                e.content,
                e.prompt_tokens,
                e.completion_tokens,
                now,
                _checksum(e.key, e.content, e.prompt_tokens, e.completion_tokens, e.confidence),
                e.confidence,
            )
            for e in entries
        ]
        # Keys are random hashes: in key order each B-tree page is touched once, and with room for the pages one
        # batch dirties (32 MB, freed with the connection) none is spilled and read back mid-transaction.
        rows.sort(key=lambda r: r[0])
        self.db.execute("PRAGMA cache_size=-32768")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(rows)

    def prune(self) -> int:
        """Drop entries over the age limit, then the oldest over the count limit."""
        removed = 0
        if self.max_age:
            removed += self.db.execute(
                "DELETE FROM entries WHERE created_at < ?", (int(time.time() - self.max_age),)
            ).rowcount
        if self.max_entries is not None:
            removed += self.db.execute(
                "DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY created_at DESC, key "
                "LIMIT -1 OFFSET ?)",
                (self.max_entries,),
            ).rowcount
        return removed

    def stats(self) -> dict[str, object]:
        n, oldest, newest, size = self.db.execute(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at), COALESCE(SUM(LENGTH(content)), 0) FROM entries"
        ).fetchone()
        return {
            "path": str(self.path),
            "entries": n,
            "content_bytes": size,
            "oldest": oldest,
            "newest": newest,
            "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
        }

    def clear(self) -> int:
        return self.db.execute("DELETE FROM entries").rowcount
