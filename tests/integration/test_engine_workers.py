"""Engine worker processes: a crash in an engine costs a worker, never the server, a batch or a row.

The `echo` fixture crashes on demand in a worker (`"echo_crash"` in a body: a real SIGSEGV, an abort,
a SIGKILL) and can be made to crash at start-up (`crash_at_start_if=PATH`). The server runs as a
subprocess (`coldbatch serve --engine-workers N`), is driven through the official openai SDK, and
every process it started is checked to be gone at the end.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import psutil
import pytest

from coldbatch.engines import pool
from coldbatch.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from _runner_support import env_for, free_port

pytestmark = pytest.mark.slow


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key="sk-test", max_retries=0)

    def health(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(self.base + "/health", timeout=5)
        return r.status_code, r.json()

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


@contextlib.contextmanager
def serve(tmp: Path, *args: str) -> Iterator[Server]:
    port = free_port()
    log = tmp / f"serve-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "coldbatch",
        "serve",
        "--data-dir",
        str(tmp / "data"),
        "--port",
        str(port),
        "--allow-short-windows",
        *args,
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env_for(tmp / "home"))
    srv = Server(proc, port, log)
    seen: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"serve exited {proc.returncode}: {log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(srv.base + "/health", timeout=1).status_code in (200, 503):
                    break
            assert time.monotonic() < deadline, f"serve did not start: {log.read_text()[-3000:]}"
            time.sleep(0.1)
        seen.update(srv.descendants())
        yield srv
        seen.update(srv.descendants())
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        _, alive = psutil.wait_procs(list(seen), timeout=15)
        for p in alive:
            p.kill()
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"


def worker_pids(srv: Server) -> list[int]:
    return list(srv.health()[1]["workers"]["pids"])


def settled_health(srv: Server, timeout: float = 60) -> dict[str, Any]:
    """/health once every worker slot is running again (a replacement takes a moment to start)."""
    deadline = time.monotonic() + timeout
    while (health := srv.health())[1]["workers"]["status"] == "degraded" and time.monotonic() < deadline:
        time.sleep(0.1)
    return health[1]


def create_batch(c: openai.OpenAI, tmp: Path, bodies: Sequence[dict[str, Any]]) -> Any:
    """Upload `bodies` as a chat batch file (custom_ids r0, r1, ...) and create the batch."""
    path = tmp / f"in-{time.monotonic_ns()}.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}) + b"\n"
            for i, b in enumerate(bodies)
        )
    )
    with path.open("rb") as fh:
        f = c.files.create(file=fh, purpose="batch")
    return c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def run_batch(srv: Server, tmp: Path, bodies: Sequence[dict[str, Any]], *, timeout: float = 120) -> dict[str, Any]:
    """Upload, create, wait until terminal; the batch and {custom_id: (where, line object)} of its results."""
    with srv.client() as c:
        batch = create_batch(c, tmp, bodies)
        deadline = time.monotonic() + timeout
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, f"batch stuck in {batch.status}: {srv.log.read_text()[-3000:]}"
            time.sleep(0.2)
            batch = c.batches.retrieve(batch.id)
        lines = []
        for fid, where in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
            if fid:
                lines += [(where, orjson.loads(ln)) for ln in c.files.content(fid).read().splitlines()]
    counts = Counter(obj["custom_id"] for _, obj in lines)
    assert counts == Counter(f"r{i}" for i in range(len(bodies))), "every custom_id exactly once"
    return {"batch": batch, "results": {obj["custom_id"]: (where, obj) for where, obj in lines}}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def test_crashing_requests_are_retried_once_then_reported_and_the_batch_completes(tmp_path: Path) -> None:
    poison = {40: "segv", 170: "abort", 260: "kill"}
    bodies = [chat(f"row {i}", **({"echo_crash": poison[i]} if i in poison else {})) for i in range(300)]
    with serve(tmp_path, "--engine", "echo", "--engine-workers", "2") as srv:
        first = set(worker_pids(srv))
        out = run_batch(srv, tmp_path, bodies)
        assert out["batch"].status == "completed"
        for i in range(300):
            where, obj = out["results"][f"r{i}"]
            if i in poison:
                assert where == "error"
                assert obj["response"]["status_code"] == 500
                assert obj["response"]["body"]["error"]["code"] == pool.CRASHED
            else:  # an innocent request that shared a dead worker was retried alone and answered
                assert where == "output", obj
                assert obj["response"]["body"]["choices"][0]["message"]["content"] == f"row {i}"
        health = settled_health(srv)
        assert health["workers"]["status"] == "ok"
        # each poison request killed its retry's worker; the first deaths may have held more than one
        assert len(poison) < health["workers"]["crashes"] <= 2 * len(poison)
        assert not first & set(health["workers"]["pids"])  # the workers that died were replaced
        with srv.client() as c:  # and the server still answers
            assert (
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                .choices[0]
                .message.content
                == "hi"
            )


def test_a_hot_request_that_crashes_its_worker_gets_a_500_with_the_code(tmp_path: Path) -> None:
    with serve(tmp_path, "--engine", "echo", "--engine-workers", "1") as srv:
        r = httpx.post(srv.base + "/v1/chat/completions", json=chat("x", echo_crash="segv"), timeout=60)
        assert r.status_code == 500
        assert r.json()["error"]["code"] == pool.CRASHED
        r = httpx.post(srv.base + "/v1/chat/completions", json=chat("after"), timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "after"
        assert "killed by SIGSEGV" in srv.log.read_text()


def test_a_worker_that_keeps_crashing_at_start_is_given_up_and_reported_once(tmp_path: Path) -> None:
    marker = tmp_path / "crash-now"
    with serve(
        tmp_path, "--engine", "echo", "--engine-workers", "1", "--engine-option", f"crash_at_start_if={marker}"
    ) as srv:
        assert srv.health()[0] == 200
        marker.touch()  # from now on a new worker segfaults while it starts
        r = httpx.post(srv.base + "/v1/chat/completions", json=chat("x", echo_crash="kill"), timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == pool.UNAVAILABLE  # no worker left to retry on
        deadline = time.monotonic() + 60
        while (health := srv.health())[0] != 503:
            assert time.monotonic() < deadline, health
            time.sleep(0.2)
        assert health[1]["status"] == "unavailable"
        assert "SIGSEGV" in health[1]["workers"]["given_up"]["0"]
        r = httpx.post(srv.base + "/v1/chat/completions", json=chat("y"), timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == pool.UNAVAILABLE
        with srv.client() as c:
            assert c.models.list().data  # the API itself still answers
        time.sleep(1.0)
        assert srv.log.read_text().count("given up") == 1  # reported once, no restart loop


def test_serve_refuses_to_start_when_its_workers_cannot(tmp_path: Path) -> None:
    marker = tmp_path / "crash"
    marker.touch()
    port = free_port()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "echo",
            "--engine-workers",
            "1",
            "--engine-option",
            f"crash_at_start_if={marker}",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env=env_for(tmp_path / "h"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "could not start in a worker process" in r.stderr and "SIGSEGV" in r.stderr


def test_an_unknown_engine_option_is_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "echo",
            "--engine-option",
            "latency_ms=3",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env=env_for(tmp_path / "h"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "has no option 'latency_ms'" in r.stderr and "latency" in r.stderr
    assert "Traceback" not in r.stderr


def test_in_process_engines_refuse_the_crash_switch() -> None:
    import asyncio

    from coldbatch.engines.echo import EchoEngine

    result = asyncio.run(EchoEngine().complete("/v1/chat/completions", chat("x", echo_crash="segv")))
    assert result.status_code == 400 and result.body["error"]["code"] == "echo_crash_refused"


def test_native_engines_never_run_in_the_server_process() -> None:
    with pytest.raises(ConfigError, match="must run in worker processes"):
        pool.open_engine("llama-cpp", workers=0)


# -- the real local model --------------------------------------------------------------------------------------
LABEL_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": ["negative", "neutral", "positive"]}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


def test_kill_9_of_a_llama_cpp_worker_mid_batch_loses_nothing(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    bodies = [
        {
            "model": "SmolLM2-135M-Instruct",
            "temperature": 0,
            "max_tokens": 16,
            "response_format": LABEL_FORMAT,
            "messages": [{"role": "user", "content": f"Tweet {i}: the flight was {'late' if i % 2 else 'fine'}"}],
        }
        for i in range(40)
    ]
    with serve(tmp_path, "--engine", "llama-cpp", "--engine-workers", "2") as srv:
        maps = Path(f"/proc/{srv.proc.pid}/maps")
        if maps.exists():  # the server itself never loads llama.cpp
            assert "libllama" not in maps.read_text() and "libggml" not in maps.read_text()
        victims = worker_pids(srv)
        assert len(victims) == 2
        with srv.client() as c:
            batch = create_batch(c, tmp_path, bodies)
            deadline = time.monotonic() + 120
            while (batch := c.batches.retrieve(batch.id)).request_counts.completed < 4:
                assert time.monotonic() < deadline and batch.status in ("validating", "in_progress"), batch
                time.sleep(0.05)
            psutil.Process(victims[0]).kill()  # kill -9 of a real llama.cpp worker in the middle of the batch
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                assert time.monotonic() < deadline, srv.log.read_text()[-3000:]
                time.sleep(0.2)
                batch = c.batches.retrieve(batch.id)
            assert batch.status == "completed"
            assert batch.request_counts.completed == 40 and batch.request_counts.failed == 0
            lines = [orjson.loads(ln) for ln in c.files.content(batch.output_file_id).read().splitlines()]
        assert sorted(ln["custom_id"] for ln in lines) == sorted(f"r{i}" for i in range(40))
        for ln in lines:
            label = orjson.loads(ln["response"]["body"]["choices"][0]["message"]["content"])["label"]
            assert label in ("negative", "neutral", "positive")
        health = settled_health(srv)["workers"]
        assert health["status"] == "ok" and health["crashes"] == 1 and victims[0] not in health["pids"]


def test_a_model_file_that_is_not_gguf_is_refused_at_start(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "llama-cpp",
            "--model-path",
            str(fake),
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env=env_for(tmp_path / "h"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert f"{fake} is not a GGUF model file" in r.stderr and "Traceback" not in r.stderr
