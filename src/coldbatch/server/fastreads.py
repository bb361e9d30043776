"""The two polls every batch client sends, answered without the framework: `GET /v1/batches/{id}` and
`GET /v1/batches`.

Why: clients poll while a batch runs, often dozens of them every second, and each poll used to cost the
server ~0.3 ms of CPU in Starlette's middleware, routing, request objects and stdlib json — CPU that the
batch being polled then lacks when the machine is busy (issue 15, item 6: polls p99 and batch time under
load). Here a poll is a dict lookup of the caller, one indexed SELECT and one orjson encode.

Only the plain success is answered here: a poll with a bad key, an unknown batch or odd query
parameters goes on to the ordinary handlers in `routes.py`, which render every error exactly as before.
So this module decides nothing of its own; the answers are byte-for-byte those of `routes.py` (a test
compares them).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from coldbatch.protocol import batches as B
from coldbatch.server.objects import batch_object
from coldbatch.server.routes import owner_of

PREFIX = "/v1/batches"
_HEADERS = [(b"content-type", b"application/json")]


class FastReads:
    """Pure ASGI, inside the request-id middleware (so its answers carry an `x-request-id` and its
    unexpected errors get the same 500 envelope as any other route's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = _answer(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _answer(scope: Scope) -> bytes | None:
    """The JSON of a successful poll, or None for anything the ordinary handlers must answer."""
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    services = (scope.get("state") or {}).get("services")
    if services is None:
        return None
    rest = path[len(PREFIX) :]
    if rest == "":  # ("/v1/batches/" is the router's: it redirects)
        return _list(services, scope)
    batch_id = rest[1:]
    if not batch_id or "/" in batch_id:
        return None
    owner = _owner(services, scope)
    row = services.store.get_batch(batch_id, owner) if owner else None
    return orjson.dumps(batch_object(row)) if row is not None else None


def _list(services: Any, scope: Scope) -> bytes | None:
    params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
    if not params.keys() <= {"limit", "after"}:
        return None
    limit = params.get("limit", "20")
    if not (limit.isdigit() and 1 <= int(limit) <= 100):
        return None
    owner = _owner(services, scope)
    if owner is None:
        return None
    rows, more = services.store.list_batches(owner, after=params.get("after"), limit=int(limit))
    return orjson.dumps(B.list_page([batch_object(r) for r in rows], more))


def _owner(services: Any, scope: Scope) -> str | None:
    authorization = api_key = ""
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    return owner_of(services, authorization, api_key)
