"""The store contract suite's fixtures: one parameter per implementation of each interface.

Every test in tests/store/ asks for `server_store`, `blob_store`, `ledger_store` or `cache_store` and runs
once per implementation registered below. A new backend (PostgreSQL, S3) adds one factory to the dict of
its interface: it gets a fresh `tmp_path` and returns an EMPTY store, and skips (pytest.skip) only when its
documented variable says so. `*_REOPEN` factories give a second handle on the store the first one made (a
second connection, as a second thread or process has), for the tests where two actors race.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _scaleout_infra import pg_schema_url, s3_bucket
from coldbatch.store.blobs import LocalBlobStore
from coldbatch.store.cache import ResultCache
from coldbatch.store.interfaces import BlobStore, CacheStore, LedgerStore, ServerStore
from coldbatch.store.ledger import Ledger
from coldbatch.store.memory import MemoryBlobStore, MemoryServerStore
from coldbatch.store.memory_ledger import MemoryCache, MemoryLedger
from coldbatch.store.sqlite import SqliteStore

ServerFactory = Callable[[Path], ServerStore]
_memory_servers: dict[Path, MemoryServerStore] = {}


def _memory_server(tmp_path: Path) -> MemoryServerStore:
    return _memory_servers.setdefault(tmp_path, MemoryServerStore())


def _tag(tmp: Path) -> str:
    """A schema / bucket name of this test's own (the same for every call with the same tmp_path)."""
    return hashlib.sha1(str(tmp).encode()).hexdigest()[:16]


def _pg(tmp: Path) -> ServerStore:
    """PostgreSQL (tests/_scaleout_infra.py starts it; COLDBATCH_SKIP_SCALEOUT=1 skips): a schema per test."""
    from coldbatch.store.postgres import PgStore

    return PgStore(pg_schema_url("t_" + _tag(tmp)), max_size=4)


def _s3(tmp: Path) -> BlobStore:
    """An S3 server (moto_server unless COLDBATCH_TEST_S3_ENDPOINT names one): a bucket per test."""
    from coldbatch.store.s3 import S3BlobStore

    return S3BlobStore(f"s3://{s3_bucket('cb-' + _tag(tmp))}/blobs", scratch=tmp / "s3-scratch")


#: name → a fresh, empty store in `tmp_path`
SERVER_STORES: dict[str, ServerFactory] = {
    "sqlite": lambda tmp: SqliteStore(tmp / "db.sqlite3"),
    "memory": _memory_server,
    "postgresql": _pg,
}
#: name → another handle on the store the factory of the same name made in `tmp_path`
SERVER_STORE_REOPEN: dict[str, ServerFactory] = {
    "sqlite": lambda tmp: SqliteStore(tmp / "db.sqlite3"),
    "memory": _memory_server,  # one object, locked inside: the same store seen from another thread
    "postgresql": _pg,  # another pool of connections to the same schema
}
BLOB_STORES: dict[str, Callable[[Path], BlobStore]] = {
    "folder": lambda tmp: LocalBlobStore(tmp / "files"),
    "memory": lambda tmp: MemoryBlobStore(),
    "s3": _s3,
}
LEDGERS: dict[str, Callable[[Path], LedgerStore]] = {
    "sqlite": lambda tmp: Ledger(tmp / "ledger.sqlite3"),
    "memory": lambda tmp: MemoryLedger(),
}
#: name → a fresh cache with these limits (max_entries, max_age_days)
CACHES: dict[str, Callable[..., CacheStore]] = {
    "sqlite": lambda tmp, **limits: ResultCache(tmp / "cache.sqlite3", **limits),
    "memory": lambda tmp, **limits: MemoryCache(**limits),
}


@pytest.fixture(params=sorted(SERVER_STORES))
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_store(server_kind: str, tmp_path: Path) -> Iterator[ServerStore]:
    store = SERVER_STORES[server_kind](tmp_path)
    yield store
    store.close()
    _memory_servers.pop(tmp_path, None)


@pytest.fixture
def reopen_server(server_kind: str, tmp_path: Path) -> Callable[[], ServerStore]:
    """Another handle on `server_store` (call it after `server_store` exists)."""
    return lambda: SERVER_STORE_REOPEN[server_kind](tmp_path)


@pytest.fixture(params=sorted(BLOB_STORES))
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    return BLOB_STORES[request.param](tmp_path)


@pytest.fixture(params=sorted(LEDGERS))
def ledger_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    ledger = LEDGERS[request.param](tmp_path)
    yield ledger
    ledger.close()


@pytest.fixture(params=sorted(CACHES))
def make_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., CacheStore]]:
    made: list[CacheStore] = []

    def make(**limits: Any) -> CacheStore:
        made.append(CACHES[request.param](tmp_path / f"c{len(made)}", **limits))
        return made[-1]

    yield make
    for c in made:
        c.close()
