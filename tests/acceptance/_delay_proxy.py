"""A loopback HTTP proxy that holds the answer to a batch-create call: the crash window of exactly-once.

Requests are forwarded to `upstream` as they are (httpx); when one is a batch create (`POST .../batches` or
`POST .../messages/batches`), the upstream's answer is held `hold` seconds before it is passed on, and `created`
is set: the batch exists on the server, the client has not heard of it. A test kills the client then, and
checks that `resume` finds that batch instead of creating a second one. With `rewrite`, paths under one prefix
are forwarded under another (Azure's `/openai/...` onto the server's `/v1/...`), and `seen` records every call.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coldbatch.testing.upstream import UpstreamServer

_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class DelayProxy:
    def __init__(self, upstream: str, hold: float = 0.0, rewrite: tuple[str, str] | None = None) -> None:
        """`rewrite`: (prefix seen, prefix forwarded), e.g. Azure's /openai/ onto the server's /v1/."""
        self.upstream, self.hold, self.rewrite = upstream.rstrip("/"), hold, rewrite
        self.seen: list[tuple[str, str, str]] = []  #: (method, path, query) of every request, as the client sent it
        self.created = threading.Event()
        self.creates = 0
        self._closing = False
        self._server = UpstreamServer(
            Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST", "DELETE"])])
        )

    async def _forward(self, request: Request) -> Response:
        path = request.url.path
        self.seen.append((request.method, path, request.url.query))
        if self.rewrite and path.startswith(self.rewrite[0]):
            path = self.rewrite[1] + path[len(self.rewrite[0]) :]
        is_create = request.method == "POST" and path.rstrip("/").endswith("/batches")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with httpx.AsyncClient(timeout=120) as client:
            up = await client.request(
                request.method,
                self.upstream + path,
                params=request.query_params,
                headers=headers,
                content=await request.body(),
            )
        if is_create and up.status_code < 300:
            self.creates += 1
            self.created.set()
            until = anyio.current_time() + self.hold
            while anyio.current_time() < until and not self._closing:
                await anyio.sleep(0.05)
        return Response(
            up.content,
            status_code=up.status_code,
            headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP},
        )

    def __enter__(self) -> DelayProxy:
        self.url = self._server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closing = True  # a held answer is let go (to a client that is gone) so the server stops cleanly
        self._server.stop()
