"""Contract-test fixtures: the real `create_app()` under uvicorn on loopback, in a background thread.

`serve(...)` starts one server per call (any engine, any `ServerSettings` field) and stops it at the
end of the test; `server` is the common case (echo engine, no API keys, short windows allowed).
Tests talk to it with the unmodified `openai` SDK (`srv.client()`) or plain httpx (`srv.http()`),
so the only thing that differs from talking to OpenAI is `base_url` (STYLE.md §7.2 rule 22).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from coldbatch.engines.base import Engine
from coldbatch.engines.echo import EchoEngine
from coldbatch.server.app import create_app
from coldbatch.server.app_types import ServerSettings
from coldbatch.server.executor import ExecutorConfig

try:  # the HTTP library the installed SDK uses: httpx2 for openai 3.x, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs (scripts/sdk-matrix)
    import httpx  # type: ignore[no-redef]

FAST = ExecutorConfig(poll_seconds=0.05, flush_seconds=0.05)
START_TIMEOUT = 60.0  # seconds when idle; a loaded 2-core machine running parallel workers took over 10 s


class _CountRequests:
    """Records (method, path) of every HTTP request the app receives (to prove the SDK did not retry)."""

    def __init__(self, app: ASGIApp, seen: list[tuple[str, str]]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@dataclass
class Server:
    """A running server: its URLs, what it was started with, and what it has received."""

    root: str  #: http://127.0.0.1:PORT
    settings: ServerSettings
    engine: Engine
    requests: list[tuple[str, str]] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def client(self, api_key: str = "sk-test", **kwargs: Any) -> openai.OpenAI:
        """The official SDK, changed only in `base_url` (closed at teardown)."""
        c = openai.OpenAI(base_url=self.base_url, api_key=api_key, **kwargs)
        self._closers.append(c.close)
        return c

    def http(self, api_key: str | None = "sk-test") -> httpx.Client:
        """Plain httpx on the server root, for requests the SDK cannot make (closed at teardown)."""
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        c = httpx.Client(base_url=self.root, headers=headers, timeout=30)
        self._closers.append(c.close)
        return c

    def blob_keys(self) -> list[str]:
        """What the blob store holds: published keys, plus `tmp/NAME` for each unfinished write (a folder's
        scratch file, an S3 multipart upload not completed nor aborted)."""
        if self.settings.blobs_url:
            import boto3

            bucket, _, prefix = self.settings.blobs_url[5:].partition("/")
            s3 = boto3.client("s3")
            keys = [o["Key"][len(prefix) + 1 :] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
            ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            return sorted(keys + [f"tmp/{u['Key']}" for u in ups])
        root = self.settings.data_dir / "files"
        return sorted(
            [p.name for p in root.iterdir() if p.name != "tmp"] + [f"tmp/{p.name}" for p in (root / "tmp").iterdir()]
        )

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r == (method, path))


def _start(settings: ServerSettings, engine: Engine) -> tuple[Server, Callable[[], None]]:
    seen: list[tuple[str, str]] = []
    app = _CountRequests(create_app(settings, engine), seen)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
        loop="asyncio",
        http="h11",
        ws="none",
    )
    userver = uvicorn.Server(config)
    thread = threading.Thread(target=userver.run, name="uvicorn-contract", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not userver.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            userver.should_exit = True
            thread.join(5)
            raise RuntimeError("the contract-test server did not start")
        time.sleep(0.01)
    port = userver.servers[0].sockets[0].getsockname()[1]
    srv = Server(f"http://127.0.0.1:{port}", settings, engine, seen)

    def stop() -> None:
        for close in reversed(srv._closers):
            close()
        userver.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the contract-test server did not stop"

    return srv, stop


ServeFactory = Callable[..., Server]


@pytest.fixture
def backend() -> str:
    """The store the `serve` servers use: "sqlite" (SQLite + folder); a module overrides this fixture with
    params ["sqlite", "postgres"] to run its tests on PostgreSQL + S3 as well (tests/_scaleout_infra.py)."""
    return "sqlite"


#: scale-out servers in the contract tests: short leases, so a cancel or an expiry settles in about a second
SCALEOUT_LEASE_SECONDS = 1.5


@pytest.fixture
def serve(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[ServeFactory]:
    """Factory: `serve(engine=None, **settings)` starts a server; all are stopped at teardown.

    Settings default to a fresh data dir under tmp_path, `allow_short_windows=True` and a fast executor;
    any `ServerSettings` field can be overridden (`api_keys=[...]`, `max_upload_bytes=...`,
    `executor=replace(FAST, enqueued_token_limit=10)`). The engine defaults to `EchoEngine()`.
    """
    stops: list[Callable[[], None]] = []
    n = 0
    where = request.getfixturevalue("scaleout") if backend == "postgres" else None  # (torn down after the servers)

    def factory(engine: Engine | None = None, **overrides: Any) -> Server:
        nonlocal n
        n += 1
        base = ServerSettings(data_dir=tmp_path / f"server{n}", allow_short_windows=True, executor=FAST)
        if where is not None:
            base = replace(
                base, store_url=where.store_url, blobs_url=f"{where.blobs_url}{n}", lease_seconds=SCALEOUT_LEASE_SECONDS
            )
        srv, stop = _start(replace(base, **overrides), engine or EchoEngine())
        stops.append(stop)
        return srv

    yield factory
    for stop in reversed(stops):
        stop()


@pytest.fixture
def server(serve: ServeFactory) -> Server:
    """The default server: echo engine, no API keys (one shared namespace), short windows allowed."""
    return serve()


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return server.client()
