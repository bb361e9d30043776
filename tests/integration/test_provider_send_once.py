"""A billable POST (upload, batch create) is sent exactly once through the real SDK: a failure that may have
reached the provider comes back as `Retryable` naming the call (the runner then reconciles before sending again),
any other failure as the SDK's own error (providers/base.py: `send_once`, shared by the three adapters)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coldbatch.providers.base import Retryable
from coldbatch.providers.openai_compat import OpenAIProvider
from coldbatch.testing.upstream import UpstreamServer


class Failing:
    """A provider whose POSTs all fail with `status`; counts what reached it."""

    def __init__(self) -> None:
        self.status = 500
        self.posts: list[str] = []

    async def post(self, request: Request) -> Response:
        await request.body()
        self.posts.append(request.url.path)
        error = {"message": "no", "type": "server_error", "param": None, "code": None}
        return JSONResponse({"error": error}, status_code=self.status)


@pytest.fixture
def failing() -> Iterator[tuple[Failing, str]]:
    state = Failing()
    routes = [Route(p, state.post, methods=["POST"]) for p in ("/v1/files", "/v1/batches")]
    with UpstreamServer(Starlette(routes=routes)) as server:
        yield state, server.url + "/v1"


def _upload(base_url: str, path: Path) -> None:
    async def go() -> None:
        provider = OpenAIProvider(base_url=base_url, api_key="k", max_retries=3, timeout=10)
        try:
            await provider.upload(path, "unit-7.jsonl")
        finally:
            await provider.aclose()

    asyncio.run(go())


def test_a_server_error_on_upload_is_retryable_and_was_sent_once(failing: tuple[Failing, str], tmp_path: Path) -> None:
    state, base_url = failing
    path = tmp_path / "unit-7.jsonl"
    path.write_text('{"custom_id": "a"}\n')
    with pytest.raises(Retryable, match=r"^upload of unit-7\.jsonl: InternalServerError: "):
        _upload(base_url, path)
    assert state.posts == ["/v1/files"]  # the SDK's own retries (max_retries=3) are off for this call


def test_a_refused_batch_create_is_the_sdks_error_not_retryable(failing: tuple[Failing, str]) -> None:
    state, base_url = failing
    state.status = 400

    async def go() -> None:
        provider = OpenAIProvider(base_url=base_url, api_key="k", max_retries=3, timeout=10)
        try:
            await provider.create_batch("file-1", "/v1/chat/completions", {"unit": "7"}, "24h")
        finally:
            await provider.aclose()

    with pytest.raises(openai.BadRequestError) as caught:
        asyncio.run(go())
    assert not isinstance(caught.value, Retryable)
    assert state.posts == ["/v1/batches"]
