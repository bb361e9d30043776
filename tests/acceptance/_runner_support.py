"""Shared by the runner's acceptance tests: `coldbatch serve --engine echo` as a subprocess, the CLI as a
subprocess, and what the server holds (read with the unmodified `openai` SDK)."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

REPO = Path(__file__).resolve().parents[2]
TWEETS = REPO.parent / "shared/data/airline-tweets/Tweets.csv"
#: how long `coldbatch serve` may take to answer /health: seconds when idle, but a 2-core machine running the
#: suite on several xdist workers (and other work) has taken over 30 s to start one; start-up is not what is tested
START_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(home: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: its own COLDBATCH_HOME, nothing inherited that changes behaviour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLDBATCH_", "OPENAI_"))}
    env["COLDBATCH_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class EchoServer:
    base_url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="sk-test", max_retries=2)

    def batches(self, job: str | None = None) -> list[dict[str, Any]]:
        with self.client() as c:
            out = [b.model_dump() for b in c.batches.list(limit=100)]
        return [b for b in out if job is None or (b.get("metadata") or {}).get("coldbatch_job") == job]

    def files(self) -> list[dict[str, Any]]:
        with self.client() as c:
            return [f.model_dump() for f in c.files.list()]

    def content(self, file_id: str) -> bytes:
        with self.client() as c:
            return c.files.content(file_id).read()


@contextlib.contextmanager
def echo_server(
    data_dir: Path, *, latency: float = 0.0, failure_rate: float = 0.0, extra: Sequence[str] = ()
) -> Iterator[EchoServer]:
    """A `coldbatch serve --engine echo` process on a free loopback port; stopped (by its pid) at the end."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = data_dir.parent / f"serve-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "coldbatch",
        "serve",
        "--engine",
        "echo",
        "--echo-latency",
        str(latency),
        "--echo-failure-rate",
        str(failure_rate),
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        *extra,
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env_for(data_dir.parent / "srv-home"))
    srv = EchoServer(f"http://127.0.0.1:{port}/v1", proc, log)
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"coldbatch serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"coldbatch serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield srv
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def coldbatch(home: Path, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m coldbatch ARGS` with COLDBATCH_HOME=home, to completion."""
    return subprocess.run(
        [sys.executable, "-m", "coldbatch", *map(str, args)],
        env=env_for(home),
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def job_id_from(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.startswith("job ") and "(resume with:" in line:
            return line.split()[1]
    raise AssertionError(f"no job id in stderr:\n{stderr[-2000:]}")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
