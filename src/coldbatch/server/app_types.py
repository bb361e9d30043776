"""The settings and service bundle shared by the app factory and the handlers."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from coldbatch.engines.base import Engine
from coldbatch.protocol import limits as L
from coldbatch.server.executor import Executor, ExecutorConfig
from coldbatch.server.scheduler import Slots
from coldbatch.store.blobs import LocalBlobStore
from coldbatch.store.sqlite import SqliteStore


@dataclass
class ServerSettings:
    data_dir: Path
    api_keys: Collection[str] = ()
    max_upload_bytes: int = L.MAX_FILE_BYTES
    allow_short_windows: bool = False
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


@dataclass
class Services:
    settings: ServerSettings
    store: SqliteStore
    blobs: LocalBlobStore
    engine: Engine
    slots: Slots
    executor: Executor
    owners: dict[str, str]  # sha256(key) -> owner id
