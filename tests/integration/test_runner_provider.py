"""The runner with the real `OpenAIProvider` (the openai SDK) against the real server app, whose answer to a
paid call is lost after the server acted on it: what a timeout or a dropped connection does.

The SDK retries POSTs on 5xx and timeouts with no idempotency key; left to itself it would upload a file
twice or create a second batch (and bill it). The provider sends these calls once; the runner looks for
the object by its tag and adopts it.
"""

from __future__ import annotations

import asyncio
import csv
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coldbatch.builder.spec import RequestSpec
from coldbatch.engines.echo import EchoEngine
from coldbatch.protocol.limits import Limits
from coldbatch.providers.openai_compat import OpenAIProvider
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.options import RunOptions
from coldbatch.runner.orchestrator import Runner
from coldbatch.server.app import create_app
from coldbatch.server.app_types import ServerSettings
from coldbatch.server.executor import ExecutorConfig


class LoseAnswers:
    """Lets the app act on the first `n` requests to (method, path), then answers 502 instead of its reply."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.lose: dict[tuple[str, str], int] = {}
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            key = (scope["method"], scope["path"])
            self.seen.append(key)
            if self.lose.get(key, 0) > 0:
                self.lose[key] -= 1

                async def drop(message: Message) -> None:
                    return None

                await self.app(scope, receive, drop)
                await JSONResponse(
                    {"error": {"message": "bad gateway", "type": "server_error", "param": None, "code": None}},
                    status_code=502,
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, LoseAnswers]]:
    settings = ServerSettings(
        data_dir=tmp_path / "srv",
        allow_short_windows=True,
        executor=ExecutorConfig(poll_seconds=0.05, flush_seconds=0.05),
    )
    app = LoseAnswers(create_app(settings, EchoEngine()))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    userver = uvicorn.Server(config)
    thread = threading.Thread(target=userver.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not userver.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = userver.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", app
    userver.should_exit = True
    thread.join(10)


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0.05)


def _job(tmp: Path, base_url: str) -> tuple[Ledger, str]:
    inp = tmp / "in.csv"
    with inp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text"])
        w.writerows([[f"line {i}"] for i in range(30)])
    ledger = Ledger(tmp / "home" / "ledger.sqlite3")
    opts = RunOptions(
        spec=RequestSpec(model="gpt-4o-mini", prompt="Say {text}").describe(),
        limits=asdict(Limits(max_requests=10)),
        poll_interval=0.05,
        keep_remote_files=True,
        provider=base_url,
    )
    ledger.create_job("j", str(inp), str(tmp / "out.csv"), asdict(opts))
    return ledger, "j"


def _run(tmp: Path, base_url: str) -> tuple[Ledger, dict[str, Any]]:
    ledger, job = _job(tmp, base_url)

    async def go() -> dict[str, Any]:
        provider = OpenAIProvider(base_url=base_url, api_key="sk-test", max_retries=5)
        try:
            runner = Runner(ledger, provider, job, tmp / "home", sleep=_no_sleep)
            runner.prepare()
            return (await runner.run()).to_json()
        finally:
            await provider.aclose()

    return ledger, asyncio.run(go())


@pytest.mark.parametrize("path", ["/v1/files", "/v1/batches"])
def test_a_lost_answer_to_a_paid_call_never_makes_a_second_object(
    tmp_path: Path, server: tuple[str, LoseAnswers], path: str
) -> None:
    base_url, app = server
    app.lose[("POST", path)] = 2  # the first two answers are lost: two units' calls took effect unseen
    ledger, report = _run(tmp_path, base_url)
    assert report["succeeded"] == 30
    units = ledger.units("j")
    with openai.OpenAI(base_url=base_url, api_key="sk-test") as client:
        batches = [b for b in client.batches.list(limit=100) if (b.metadata or {}).get("coldbatch_job") == "j"]
        uploads = [f for f in client.files.list() if f.purpose == "batch"]
    assert len(units) == 3
    assert sorted(b.id for b in batches) == sorted(u.batch_id for u in units), "one batch per unit"
    assert sorted(f.filename for f in uploads) == sorted(f"j.u{u.id}.jsonl" for u in units), "one upload each"
    assert app.seen.count(("POST", path)) == 3, "each paid call was sent exactly once"
