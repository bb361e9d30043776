"""The settings and service bundle shared by the app factory and the handlers."""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldbatch.engines.base import Engine
from coldbatch.protocol import limits as L
from coldbatch.server.executor import Executor, ExecutorConfig
from coldbatch.server.metrics import ServerMetrics
from coldbatch.server.scheduler import Slots
from coldbatch.store.interfaces import BlobStore, ServerStore


@dataclass
class ServerSettings:
    data_dir: Path
    api_keys: Collection[str] = ()
    max_upload_bytes: int = L.MAX_FILE_BYTES
    allow_short_windows: bool = False
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    #: an OpenTelemetry TracerProvider to trace with (tests); else OTEL_EXPORTER_OTLP_ENDPOINT decides
    tracer_provider: Any = None
    #: scale-out (server/scaleout.py): a postgresql:// URL instead of the SQLite file in data_dir, and an
    #: s3://BUCKET/PREFIX instead of the folder; `execute` False leaves execution to `coldbatch worker`s
    store_url: str | None = None
    blobs_url: str | None = None
    execute: bool = True
    lease_seconds: float = 30.0
    chunk_lines: int = 1000
    #: a blob no file row owns, or an unfinished multipart upload, older than this is removed by the sweep
    orphan_grace_seconds: float = 600.0


@dataclass
class Services:
    settings: ServerSettings
    store: ServerStore
    blobs: BlobStore
    engine: Engine
    slots: Slots
    executor: Executor
    owners: dict[str, str]  # sha256(key) -> owner id
    metrics: ServerMetrics = field(init=False)
    #: signs the dashboard's session cookies; new at every start, so a restart logs everyone out
    session_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.store, self.engine, self.slots)  # needs the rest of the bundle
