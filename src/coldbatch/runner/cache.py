"""The result cache across jobs, as the runner names it: the SQLite implementation lives in
`store/cache.py`, behind `store.interfaces.CacheStore`."""

from __future__ import annotations

from coldbatch.store.cache import Entry, ResultCache

__all__ = ["Entry", "ResultCache"]
