"""`coldbatch run` on the embedded default survives a crash of its local model: kill -9 of the llama.cpp
worker process in the middle of the job, and the job still ends with every row labelled, exit code 0.
(Before engine workers, the model ran inside the client: one segfault ended the whole job.)"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _runner_support import env_for

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline-tweets-200.csv"
LABELS = ("negative", "neutral", "positive")
ROWS = 30


def _engine_workers(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if "coldbatch.engines.worker" in " ".join(k.cmdline())]


def test_the_job_survives_a_kill_9_of_its_model_worker(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    with EXAMPLE.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:ROWS]
    with sample.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "labelled.csv"
    log = tmp_path / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coldbatch",
                "run",
                str(sample),
                "--out",
                str(out),
                "--prompt",
                "Tweet: {text}",
                "--model",
                "SmolLM2-135M-Instruct",
                "--labels",
                ",".join(LABELS),
                "--max-tokens",
                "16",
                "--temperature",
                "0",
                "--id-column",
                "tweet_id",
                "--poll-interval",
                "0.5",
                "--mode",
                "batch",
                "--yes",
            ],
            env=env_for(tmp_path / "home"),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not killed and proc.poll() is None and time.monotonic() < deadline:
            if "created: unit=" in log.read_text(errors="replace") and (workers := _engine_workers(proc.pid)):
                time.sleep(1.0)  # some requests answered, most still to run
                workers[0].kill()
                killed.append(workers[0].pid)
            time.sleep(0.1)
        assert killed, f"no engine worker seen while the job ran: {log.read_text()[-3000:]}"
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    with out.open(newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert [r["tweet_id"] for r in got] == [r["tweet_id"] for r in rows]
    assert all(r["label"] in LABELS and r["error"] == "" for r in got), [r for r in got if r["label"] not in LABELS]
    assert "died; starting a new one" in log.read_text()
