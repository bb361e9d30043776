"""Helpers shared by the benchmark scripts (run as `python bench/NAME.py`, so this module is importable)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GEN_FEEDBACK = SHARED / "bench" / "gen_feedback.py"


def feedback_csv(rows: int) -> Path:
    """The `gen_feedback.py ROWS` dataset, generated once under bench/data/ (git ignores it)."""
    data = ROOT / "bench" / "data" / f"feedback-{rows}.csv"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(GEN_FEEDBACK), str(rows), str(data)], check=True)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_rss(pid: int) -> int | None:
    """Current resident set size of `pid` (VmRSS), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size of `pid` (VmHWM, exact), in bytes."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def start_echo_server(
    data_dir: Path, port: int, latency: float, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`coldbatch serve --engine echo` (a test fixture, not a model) on 127.0.0.1:`port`, its output in `log`;
    returned once /health answers. Exits the benchmark if it dies or is not up in 30 s."""
    cmd = [sys.executable, "-m", "coldbatch", "serve", "--engine", "echo", "--echo-latency", str(latency)]
    cmd += ["--data-dir", str(data_dir), "--port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not come up in 30 s; see {log}")
        time.sleep(0.05)
