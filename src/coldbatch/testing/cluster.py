"""A scale-out deployment on one machine, as real processes: N `coldbatch serve` + M `coldbatch worker` on one
PostgreSQL database and one S3 bucket. For the fault test and the scaling benchmark (not for production:
there each process runs under its own supervisor, docs/server.md).

Every process is started by this object and stopped by it, by pid; `kill(i)` is a real SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLI = str(Path(sys.executable).parent / "coldbatch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    kind: str  #: "serve" or "worker"
    argv: list[str]
    log: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    store_url: str
    blobs_url: str
    workdir: Path
    engine_options: list[str] = field(default_factory=list)
    lease_seconds: float = 2.0
    serve_args: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def _shared_args(self, command: str) -> list[str]:
        """What a serve and a worker of one cluster must agree on (engine, database, bucket, lease), built
        once so the two kinds of process cannot be started against different backends."""
        argv = [CLI, command, "--engine", "echo", "--store", self.store_url, "--blobs", self.blobs_url]
        argv += ["--lease-seconds", str(self.lease_seconds)]
        for opt in self.engine_options:
            argv += ["--engine-option", opt]
        return argv

    def add_serve(self, *, execute: bool = False) -> Proc:
        port = free_port()
        argv = [
            *self._shared_args("serve"),
            "--port",
            str(port),
            "--allow-short-windows",
            "--data-dir",
            str(self.workdir / f"serve{len(self.procs)}"),
            "--execute" if execute else "--no-execute",
            *self.serve_args,
        ]
        p = Proc("serve", argv, self.workdir / f"serve{len(self.procs)}.log", port)
        self.procs.append(p)
        return p

    def add_worker(self) -> Proc:
        argv = [*self._shared_args("worker"), "--poll-seconds", "0.1"]
        port = free_port()  # its /metrics answers once it has connected: `wait_workers` waits for that
        argv += ["--metrics-port", str(port)]
        p = Proc("worker", argv, self.workdir / f"worker{len(self.procs)}.log", port)
        self.procs.append(p)
        return p

    def wait_workers(self, timeout: float = 180.0) -> None:
        """Until every worker answers on its /metrics port (it has opened the store and the bucket)."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            while p.kind == "worker":
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(p.url + "/metrics", timeout=2).status_code == 200:
                        break
                if not p.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready: {p.log.read_text()[-2000:]}")
                time.sleep(0.1)

    def start(self, p: Proc) -> None:
        with p.log.open("ab") as log:
            p.popen = subprocess.Popen(p.argv, stdout=log, stderr=log, cwd=self.workdir, env={**os.environ})
        p.starts += 1

    def start_all(self, timeout: float = 180.0) -> None:
        """Serve processes first (they migrate the schema), then workers; waits until every serve answers."""
        for p in self.procs:
            if p.kind == "serve":
                self.start(p)
        for p in self.procs:
            if p.kind == "serve":
                self.wait_ready(p, timeout)
        for p in self.procs:
            if p.kind != "serve":
                self.start(p)

    def wait_ready(self, p: Proc, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(p.url + "/health", timeout=2).status_code == 200:
                    return
            if not p.alive:
                raise RuntimeError(f"{p.kind} exited {p.popen and p.popen.returncode}: {p.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.kind} on port {p.port} not ready after {timeout} s")
            time.sleep(0.1)

    def kill(self, p: Proc) -> None:
        """SIGKILL: no clean-up runs (a crash, the OOM killer)."""
        if p.popen is not None and p.alive:
            os.kill(p.popen.pid, signal.SIGKILL)
            p.popen.wait(10)

    def live_serve(self) -> Proc:
        for p in self.procs:
            if p.kind == "serve" and p.alive:
                return p
        raise RuntimeError("no serve process is alive")

    def stop(self) -> None:
        """SIGTERM each process started here, then SIGKILL what is left after 10 s."""
        for p in self.procs:
            if p.popen is not None and p.alive:
                p.popen.terminate()
        deadline = time.monotonic() + 10
        for p in self.procs:
            if p.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(max(0.1, deadline - time.monotonic()))
                if p.alive:
                    p.popen.kill()
                    p.popen.wait(10)
