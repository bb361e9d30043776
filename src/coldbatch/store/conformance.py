"""The type checker's proof that every implementation satisfies its interface (never imported at run time).

A Protocol is structural: a backend that drifts from it (a renamed method, a changed return type) would
only fail where it is used. `mypy` (pyproject [tool.mypy], strict on store/) checks these assignments, so
the drift fails the type check instead. A new backend adds one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coldbatch.store.blobs import LocalBlobStore
    from coldbatch.store.cache import ResultCache
    from coldbatch.store.interfaces import BlobStore, CacheStore, LedgerStore, ServerStore
    from coldbatch.store.ledger import Ledger
    from coldbatch.store.memory import MemoryBlobStore, MemoryServerStore
    from coldbatch.store.memory_ledger import MemoryCache, MemoryLedger
    from coldbatch.store.postgres import PgStore
    from coldbatch.store.s3 import S3BlobStore
    from coldbatch.store.sqlite import SqliteStore

    SERVER_STORES: tuple[type[ServerStore], ...] = (SqliteStore, MemoryServerStore, PgStore)
    BLOB_STORES: tuple[type[BlobStore], ...] = (LocalBlobStore, MemoryBlobStore, S3BlobStore)
    LEDGERS: tuple[type[LedgerStore], ...] = (Ledger, MemoryLedger)
    CACHES: tuple[type[CacheStore], ...] = (ResultCache, MemoryCache)
