"""The polls answered without the framework (server/fastreads.py) are the framework's answers, byte for
byte, and everything that is not a plain successful poll still goes to the ordinary handlers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import openai
from starlette.responses import JSONResponse

from coldbatch.protocol import batches as B
from coldbatch.server.fastreads import FastReads
from coldbatch.server.objects import batch_object
from coldbatch.store.sqlite import SqliteStore

from .conftest import ServeFactory, Server
from .test_openai_sdk import CHAT, req, upload


def framework_bytes(content: Any) -> bytes:
    """What `routes.py` sends for this content: Starlette's JSONResponse."""
    return bytes(JSONResponse(content).body)


def stored(srv: Server) -> SqliteStore:
    return SqliteStore(srv.settings.data_dir / "coldbatch.sqlite3")


def test_a_poll_is_the_framework_answer_byte_for_byte(server: Server, client: openai.OpenAI) -> None:
    f = upload(client, [req("a"), req("b", messages="not a list")])
    done = client.batches.create(
        input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"note": 'café ☕ "q" \\ \n'}
    )
    waiting = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    with contextlib.suppress(openai.ConflictError):  # it may have failed validation (line b) already
        client.batches.cancel(waiting.id)
    http = server.http()
    for _ in range(200):
        if {client.batches.retrieve(b).status for b in (done.id, waiting.id)} <= {"completed", "cancelled", "failed"}:
            break
        time.sleep(0.05)
    store = stored(server)
    for batch_id in (done.id, waiting.id):
        got = http.get(f"/v1/batches/{batch_id}")
        assert got.status_code == 200 and got.headers["content-type"] == "application/json"
        assert got.content == framework_bytes(batch_object(store.get_batch(batch_id, None) or {}))
    for query, limit, after in (("", 20, None), ("?limit=1", 1, None), (f"?limit=1&after={waiting.id}", 1, waiting.id)):
        rows, more = store.list_batches("local", after=after, limit=limit)
        got = http.get(f"/v1/batches{query}")
        assert got.content == framework_bytes(B.list_page([batch_object(r) for r in rows], more)), query
    assert got.headers["x-request-id"].startswith("req_")  # the request-id middleware still wraps the polls


def test_what_is_not_a_plain_poll_is_answered_as_before(serve: ServeFactory) -> None:
    srv = serve(api_keys=["k1", "k2"])
    mine = srv.client(api_key="k1")
    f = upload(mine, [req("a")])
    b = mine.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    other, nobody = srv.http("k2"), srv.http("wrong")
    assert other.get(f"/v1/batches/{b.id}").status_code == 404  # another key's batch
    assert nobody.get(f"/v1/batches/{b.id}").json()["error"]["code"] == "invalid_api_key"
    assert nobody.get("/v1/batches").status_code == 401
    assert srv.http("k1").get("/v1/batches?limit=0").json()["error"]["param"] == "limit"
    assert srv.http("k1").get("/v1/batches?limit=abc").status_code == 400
    assert [x["id"] for x in other.get("/v1/batches").json()["data"]] == []


def run_asgi(app: FastReads, path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> str:
    """Send one GET through FastReads; "fast" if it answered, "framework" if it passed the request on."""
    passed: list[str] = []

    async def downstream(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": headers or []}
    scope["state"] = app.state  # type: ignore[attr-defined]
    app.app = downstream
    asyncio.run(app(scope, receive, send))
    return "framework" if passed else "fast"


def test_only_successful_polls_skip_the_framework(tmp_path: Path, server: Server, client: openai.OpenAI) -> None:
    f = upload(client, [req("a")])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")

    class Svc:  # what the lifespan hands the handlers, as far as the polls read it
        def __init__(self) -> None:
            self.store, self.owners = stored(server), dict[str, str]()

    app = FastReads(lambda *a: None)  # type: ignore[arg-type]
    svc = Svc()
    app.state = {"services": svc}  # type: ignore[attr-defined]
    assert run_asgi(app, f"/v1/batches/{b.id}") == "fast"
    assert run_asgi(app, "/v1/batches") == "fast"
    assert run_asgi(app, "/v1/batches", b"limit=5&after=" + b.id.encode()) == "fast"
    for path, query in (
        ("/v1/batches/batch_nope", b""),  # 404 is the router's
        (f"/v1/batches/{b.id}/cancel", b""),
        ("/v1/batches/", b""),  # the router redirects it
        ("/v1/batches", b"limit=0"),
        ("/v1/batches", b"limit=x"),
        ("/v1/batches", b"order=asc"),  # a parameter the fast path does not know
        ("/v1/files", b""),
    ):
        assert run_asgi(app, path, query) == "framework", (path, query)
    svc.owners = {"0" * 64: "someone"}  # a server with keys: no key, no fast answer
    assert run_asgi(app, f"/v1/batches/{b.id}") == "framework"
