"""schemathesis against a live `coldbatch serve` (issue 15): requests generated from the server's own
`/openapi.json` — valid and invalid bodies, odd ids, query strings, multipart uploads — sent to a real server
process on loopback, and every response checked: no 5xx, and status, content type, headers and body as the
document says. Bounded: a few examples per operation and a time budget for the whole run (it must fit in CI)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

EXAMPLES = 8  #: generated requests per operation and mode (x ~20 operations x 2 modes)
BUDGET_S = 35.0  #: past this, the operations left still run, with 2 examples each (a slow machine stays < ~60 s)
KEY = "schemathesis-key"  #: the server runs with a key, as the document's bearer security says


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`coldbatch serve --engine echo` in its own process on a free loopback port; its base URL."""
    data = tmp_path_factory.mktemp("schemathesis")
    base = f"http://127.0.0.1:{_free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "coldbatch",
        "serve",
        "--engine",
        "echo",
        "--data-dir",
        str(data / "d"),
        "--host",
        "127.0.0.1",
        "--port",
        base.rsplit(":", 1)[1],
        "--api-key",
        KEY,
    ]
    with (data / "server.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, base, data / "server.log")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_until_up(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"coldbatch serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"coldbatch serve did not start within 60 s:\n{log.read_text()}")


def _checks() -> list[object]:
    """No 5xx, and status code, content type, headers and body as documented; invalid requests refused with
    a 4xx. Not `positive_data_acceptance` (a schema-valid request must be accepted): what a valid upload or
    batch is goes beyond what OpenAPI can say (a JSONL file of request lines, an input file that exists), so
    such requests get a documented 400 or 404, which the conformance checks still hold to the document."""
    from schemathesis import checks as C

    return [
        C.not_a_server_error,
        C.status_code_conformance,
        C.content_type_conformance,
        C.response_headers_conformance,
        C.response_schema_conformance,
        C.negative_data_rejection,
    ]


def test_generated_requests_get_answers_that_match_the_document(live: str) -> None:
    schema = schemathesis.openapi.from_url(live + "/openapi.json")
    checks = _checks()
    started, failures, ran = time.monotonic(), [], 0
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in schemathesis.GenerationMode:
            examples = EXAMPLES if time.monotonic() - started < BUDGET_S else 2

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode, headers={"Authorization": f"Bearer {KEY}"}))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=live, checks=checks, timeout=30)

            try:
                run()
            except Unsatisfiable:  # negative mode, nothing in the request can break the document (e.g. GET /health)
                pass
            except (Exception, BaseExceptionGroup) as exc:  # this operation's (shrunk) failure; go on to the next
                failures.append(f"{op.label} ({mode.value}): {exc}")
            ran += 1
    assert not failures, "\n\n".join(failures)
    assert ran >= 30, f"only {ran} operation x mode runs: is the document missing routes?"
