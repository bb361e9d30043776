"""The job's pre-flight target check (runner/preflight.py), shared by `coldbatch run` and `coldbatch.run_job`:
against a real HTTP server on loopback, a target that lists no models is let through with a note for the
caller, and a model it does not list fails the job in the ledger (with an event row) before anything is sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from coldbatch.core.unit_state import JobStatus
from coldbatch.errors import UsageError
from coldbatch.providers.openai_compat import OpenAIProvider
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.options import RunOptions
from coldbatch.runner.preflight import check_target

SEEN: list[str] = []


class _Target(BaseHTTPRequestHandler):
    """/lists/v1/models lists one model; under any other prefix the model list is not found."""

    def do_GET(self) -> None:
        SEEN.append(f"GET {self.path}")
        listed = self.path == "/lists/v1/models"
        body = orjson.dumps({"object": "list", "data": [{"id": "m-1", "object": "model"}]} if listed else {})
        self.send_response(200 if listed else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # nothing may be sent by a pre-flight check
        SEEN.append(f"POST {self.path}")
        self.send_response(500)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def target() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    SEEN.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    t.join(timeout=10)


def _check(tmp_path: Path, base_url: str, model: str) -> tuple[Ledger, list[str]]:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_job("j1", "in.csv", "out.csv", {})
    opts = RunOptions(spec={"model": model, "endpoint": "/v1/chat/completions"}, provider=base_url)
    said: list[str] = []
    provider = OpenAIProvider(base_url=base_url, api_key="k", max_retries=0)

    async def go() -> None:
        try:
            await check_target(ledger, provider, opts, "j1", said.append)
        finally:
            await provider.aclose()

    try:
        asyncio.run(go())
    except BaseException:
        ledger.close()
        raise
    return ledger, said


def test_a_target_without_a_model_list_passes_with_a_note_for_the_caller(tmp_path: Path, target: str) -> None:
    ledger, said = _check(tmp_path, f"{target}/nolist/v1", "any-model")
    try:
        assert len(said) == 1 and said[0].startswith("note: ") and "does not list its models" in said[0]
        assert "'any-model' is not checked" in said[0]
        job = ledger.job("j1")
        assert job is not None and job.status == JobStatus.PREPARING
    finally:
        ledger.close()
    assert not [s for s in SEEN if s.startswith("POST")]


def test_a_model_the_target_does_not_list_fails_the_job_before_anything_is_sent(tmp_path: Path, target: str) -> None:
    with pytest.raises(UsageError, match=r"--model 'm-2'.*does not serve it.*it serves: m-1\. Nothing was sent"):
        _check(tmp_path, f"{target}/lists/v1", "m-2")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        job = ledger.job("j1")
        assert job is not None and job.status == JobStatus.FAILED
        assert "does not serve it" in job.report["error"]
        assert ledger.job_events("j1") == [(None, "preparing"), ("preparing", "failed")]
    finally:
        ledger.close()
    assert SEEN == ["GET /lists/v1/models"]
