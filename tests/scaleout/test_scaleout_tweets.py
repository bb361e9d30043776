"""`coldbatch run` of the 14,640 airline tweets against a multi-process deployment (2 `serve` + 2 `worker` on
PostgreSQL + S3) writes the same OUTPUT, byte for byte, as against the single-process SQLite server (echo
fixture: a stable answer per text). Needs PostgreSQL and an S3 server: tests/_scaleout_infra.py.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from _scaleout_infra import Backend
from coldbatch.testing.cluster import CLI, Cluster, free_port

TWEETS = Path(__file__).resolve().parents[3] / "shared" / "data" / "airline-tweets" / "Tweets.csv"


def _run(base_url: str, out: Path, home: Path) -> None:
    """The README's job, in batch mode, against `base_url`."""
    env = {**os.environ, "COLDBATCH_HOME": str(home)}
    cmd = [
        CLI,
        "run",
        str(TWEETS),
        "--out",
        str(out),
        "--base-url",
        base_url + "/v1",
        "--api-key",
        "sk-test",
        "--model",
        "gpt-4o-mini",
        "--prompt",
        "Tweet: {text}",
        "--labels",
        "negative,neutral,positive",
        "--id-column",
        "tweet_id",
        "--on-duplicate-id",
        "suffix",
        "--mode",
        "batch",
        "--yes",
        "--no-cache",
        "--poll-interval",
        "1",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _sqlite_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "serve", "--engine", "echo", "--port", str(port), "--data-dir", str(tmp / "single")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the SQLite server did not start"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not TWEETS.exists(), reason=f"{TWEETS} is not in this checkout's shared data")
def test_tweets_output_is_identical_on_a_multi_process_deployment(scaleout: Backend, tmp_path: Path) -> None:
    proc, url = _sqlite_server(tmp_path)
    try:
        _run(url, tmp_path / "single.csv", tmp_path / "home-single")
    finally:
        proc.terminate()
        proc.wait(30)
    cluster = Cluster(scaleout.store_url, scaleout.blobs_url, tmp_path, lease_seconds=5)
    serves = [cluster.add_serve(), cluster.add_serve()]
    cluster.add_worker()
    cluster.add_worker()
    try:
        cluster.start_all()
        _run(serves[1].url, tmp_path / "multi.csv", tmp_path / "home-multi")
    finally:
        cluster.stop()
    single, multi = (tmp_path / "single.csv").read_bytes(), (tmp_path / "multi.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO(single.decode())))
    assert len(rows) == 14_640 and {r["label"] for r in rows} == {"negative", "neutral", "positive"}
    assert multi == single
