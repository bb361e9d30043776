"""`GET /openapi.json` describes every route the server answers, and real responses — what the official SDK
gets in a session of uploads, batches, cancels and errors — match its schemas (a schemathesis-style check
driven by the SDK instead of generated requests)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import openai
import pytest

from coldbatch.server import routes

from .conftest import Server
from .test_openai_sdk import CHAT, jsonl, req, upload, wait

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs
    import httpx  # type: ignore[no-redef]


def test_every_route_is_in_the_document(server: Server) -> None:
    doc = server.http(None).get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    missing = [
        (path, m) for path, _, methods in routes.ROUTES for m in methods if m.lower() not in doc["paths"].get(path, {})
    ]
    assert missing == []


def _schema_for(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any] | None:
    for template, ops in doc["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in ops:
            response = ops[method.lower()]["responses"].get(str(status))
            assert response is not None, f"{method} {path}: status {status} is not in the document"
            content = response.get("content", {})
            return content.get("application/json", {}).get("schema")
    raise AssertionError(f"{method} {path} is not in the document")


Seen = list[tuple[str, str, int]]


@pytest.fixture
def checked(server: Server) -> tuple[Callable[[httpx.Response], None], Seen]:
    """An httpx response hook that checks every response against the document, and what it saw."""
    doc = server.http(None).get("/openapi.json").json()
    seen: Seen = []

    def check(response: httpx.Response) -> None:
        response.read()
        path, method = response.request.url.path, response.request.method
        schema = _schema_for(doc, path, method, response.status_code)
        if schema is not None:
            jsonschema.validate(response.json(), {"components": doc["components"], **schema})
        seen.append((method, path, response.status_code))

    return check, seen


def test_a_session_of_real_responses_matches_the_document(
    server: Server, checked: tuple[Callable[[httpx.Response], None], Seen]
) -> None:
    hook, seen = checked
    client = server.client(http_client=httpx.Client(event_hooks={"response": [hook]}), max_retries=0)
    f = upload(client, [req("a"), req("b")])
    client.files.retrieve(f.id)
    client.files.list()
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"k": "v"})
    wait(client, b.id)
    client.batches.list()
    g = client.batches.create(
        input_file_id=upload(client, jsonl([req("c")])).id, endpoint=CHAT, completion_window="24h"
    )
    with contextlib.suppress(openai.ConflictError):  # it finished first: that 409 is checked against the document
        client.batches.cancel(g.id)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    client.models.list()
    for bad in (
        lambda: client.batches.retrieve("batch_nope"),
        lambda: client.files.retrieve("file-nope"),
        lambda: client.files.create(file=("x.txt", b"x"), purpose="batch"),
        lambda: client.batches.create(
            input_file_id=f.id, endpoint=CHAT, completion_window="24h", extra_body={"pad": "x" * 2_000_000}
        ),
    ):
        with pytest.raises(openai.APIStatusError):
            bad()
    assert {200, 400, 404, 413} <= {status for *_, status in seen} and len(seen) > 15
