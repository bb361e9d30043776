"""Deadline rescue: batches on a deliberately slow server (echo fixture, 20 s per request) and a fast
synchronous upstream; a job with a tight --deadline finishes in time, its rows answered through the
sync path, and the report says how many went which way and what the rescue cost extra."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from _runner_support import coldbatch, echo_server, read_csv

from coldbatch.testing.upstream import UpstreamServer, create_upstream


def test_a_late_batch_job_is_rescued_through_the_sync_path_before_its_deadline(tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        w.writerows((f"r{i}", f"review {i}: the flight was fine") for i in range(120))
    with (
        echo_server(tmp_path / "slow", latency=20.0) as slow,
        UpstreamServer(create_upstream(rpm=100_000, tpm=10_000_000)) as fast,
    ):
        t = time.monotonic()
        res = coldbatch(
            tmp_path / "home",
            "run",
            data,
            "--out",
            tmp_path / "out.csv",
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--mode",
            "batch",
            "--deadline",
            "12s",
            "--yes",
            "--poll-interval",
            "0.3",
            "--base-url",
            slow.base_url,
            "--sync-base-url",
            fast.url + "/v1",
            timeout=120,
        )
        took = time.monotonic() - t
        batches = slow.batches()
    assert res.returncode == 0, res.stderr[-3000:]
    assert took < 12 + 5, took  # the deadline (+ start-up and writing OUTPUT), not the batch's 20 s
    rows = read_csv(tmp_path / "out.csv")
    assert len(rows) == 120 and all(r["error"] == "" and r["response"] == f"Say {r['text']}" for r in rows)
    assert "rescue:" in res.stderr and "deadline rescue" in res.stdout
    assert batches and all(b["status"] in ("cancelling", "cancelled") for b in batches)
