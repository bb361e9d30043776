"""Helpers shared by the benchmark scripts (run as `python bench/NAME.py`, so this module is importable)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

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
