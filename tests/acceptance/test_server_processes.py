"""`coldbatch serve` leaves no process behind: its validation worker exits with it, however it ends."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest
from _runner_support import echo_server


def _children_after_start(pid: int) -> list[psutil.Process]:
    """The server's child processes once its validation worker has started (it starts at boot)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = psutil.Process(pid).children(recursive=True)
        if any("spawn_main" in " ".join(k.cmdline()) for k in kids):
            return kids
        time.sleep(0.1)
    raise AssertionError("the server started no validation worker")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_validation_worker_exits_with_the_server(tmp_path: Path, sig: signal.Signals) -> None:
    with echo_server(tmp_path / "srv") as srv:
        kids = _children_after_start(srv.proc.pid)
        srv.proc.send_signal(sig)
        srv.proc.wait(10)
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, f"left running after the server ended ({sig.name}): {[k.cmdline() for k in alive]}"
