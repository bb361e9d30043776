"""The embedded default provider: `coldbatch serve` in this process, on a loopback port.

With no OPENAI_BASE_URL / --base-url, `coldbatch run` starts the server (llama-cpp engine unless told
otherwise, in a supervised worker process like `coldbatch serve`'s, so a native crash costs a worker,
never the client) in a background thread and talks to it over HTTP with the same client code as for a remote
provider, so the embedded path exercises exactly what a real Batch API would. Its data dir lives under
COLDBATCH_HOME, so a resumed job finds its batches again.

It lives with the server, not the runner (it was `runner/embedded.py`): the runner only ever sees a base
URL, and the CLI, which composes the two, is the one place that knows both (issue 11).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from coldbatch.engines import pool
from coldbatch.errors import ConfigError
from coldbatch.server.app import create_app
from coldbatch.server.app_types import ServerSettings


class EmbeddedServer:
    def __init__(self, data_dir: Path, engine: str = "llama-cpp", **engine_options: Any) -> None:
        self.data_dir = data_dir
        self.engine_name = engine
        self.engine_options = engine_options
        self.base_url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EmbeddedServer:
        import uvicorn

        from coldbatch.server import wire

        engine = pool.open_engine(self.engine_name, **self.engine_options)  # native engines: in worker processes
        app = create_app(ServerSettings(data_dir=self.data_dir, allow_short_windows=True), engine)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", http=wire.http_protocol()
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="coldbatch-embedded", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the embedded coldbatch server did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
