"""The fault test of scale-out: 3 `serve` + 4 `worker` processes on one PostgreSQL and one S3 server, one echo
batch, random `kill -9`s of workers and servers (each restarted), and then what a user would check: the
batch completed, every custom_id exactly once in output ∪ error, no object in the bucket that no file owns,
no multipart upload left, no lease still held, and the results log and work queue purged.

Default size 6,000 lines (1-3 minutes on 2 busy cores: starting and restarting processes dominates).
The issue's full size, 200,000 lines (four batches of 50,000 running at once: the Batch API's, and the
server's, limit per batch is 50,000 requests, so one 200,000-line batch fails validation with too_many_tasks):

    COLDBATCH_FAULT_LINES=200000 .venv/bin/python -m pytest tests/scaleout/test_scaleout_faults.py -q

(figures in docs/benchmarks.md). Needs PostgreSQL and an S3 server: tests/_scaleout_infra.py.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import boto3
import openai
import psycopg
import pytest

from _scaleout_infra import Backend
from coldbatch.testing.cluster import Cluster

LINES = int(os.environ.get("COLDBATCH_FAULT_LINES", "6000"))
#: echo latency per request (16 at once per worker): about 30 s of work for 4 workers at any size, so there is
#: time for the kills whatever the size, and a small batch still keeps every process busy
LATENCY = max(0.01, min(0.5, 30 * 4 * 16 / LINES))
MIN_KILLS = 10
#: OpenAI's (and the server's) most requests per batch: a bigger run is several batches at once
BATCH_MAX = 50_000
#: kills in all, one every 1-2.5 s; then the batch drains (on 2 busy cores a process takes seconds to start,
#: so killing without pause would only measure start-ups)
KILLS = 12
#: the serve processes' --orphan-grace-seconds: an upload idle this long is a dead process's (the input's upload
#: takes longer than that under load only if a part waits this long)
GRACE = max(3.0, LINES / 2000)
LEASE = 2.0


def _input(first: int, n: int) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",  # unique across the batches
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**body, "messages": [{"role": "user", "content": f"line {i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(first, first + n)
    )


def _client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.live_serve().url + "/v1", api_key="sk-test", max_retries=5, timeout=60)


def _retrieve(cluster: Cluster, batch_id: str) -> openai.types.Batch:
    """The batch, from the first serve process that answers (one may be killed, or restarting and not yet
    listening: no SDK retry back-off on it, the next one is asked)."""
    for _ in range(100):
        for p in [p for p in cluster.procs if p.kind == "serve" and p.alive]:
            try:
                with openai.OpenAI(base_url=p.url + "/v1", api_key="sk-test", max_retries=0, timeout=10) as c:
                    return c.batches.retrieve(batch_id)
            except (openai.APIConnectionError, openai.InternalServerError):
                continue
        time.sleep(0.2)
    raise AssertionError("no serve process answered for 20 s")


def _chaos(cluster: Cluster, batch_ids: list[str], rng: random.Random, deadline: float) -> tuple[int, set[str]]:
    """Kill a random process every 1-2.5 s (KILLS in all) and restart it 0.2-1 s later, until the batch is
    terminal; returns (kills before it was terminal, final status)."""  # (every batch: their statuses)
    kills, dead = 0, []
    while time.monotonic() < deadline:
        statuses = {_retrieve(cluster, bid).status for bid in batch_ids}
        if statuses <= {"completed", "failed", "expired", "cancelled"}:
            return kills, statuses
        time.sleep(rng.uniform(1.0, 2.5) if kills < KILLS else 0.5)
        serves_alive = [p for p in cluster.procs if p.kind == "serve" and p.alive]
        victims = [p for p in cluster.procs if p.alive and (p.kind == "worker" or len(serves_alive) > 1)]
        if victims and kills < KILLS:
            victim = rng.choice(victims)
            cluster.kill(victim)
            dead.append((time.monotonic() + rng.uniform(0.2, 1.0), victim))
            kills += 1
        for due, p in list(dead):
            if time.monotonic() >= due:
                cluster.start(p)
                dead.remove((due, p))
    raise AssertionError(f"batches {batch_ids} not terminal in time ({kills} kills)")


@pytest.mark.slow
def test_kill_9_of_workers_and_servers_loses_and_duplicates_nothing(scaleout: Backend, tmp_path: Path) -> None:
    cluster = Cluster(
        scaleout.store_url,
        scaleout.blobs_url,
        tmp_path,
        lease_seconds=LEASE,
        engine_options=[f"latency={LATENCY}", "max_concurrency=16"],
        serve_args=["--orphan-grace-seconds", str(GRACE)],
    )
    for _ in range(3):
        cluster.add_serve()
    for _ in range(4):
        cluster.add_worker()
    t0 = time.monotonic()
    try:
        cluster.start_all()
        t1 = time.monotonic()
        sizes = [min(BATCH_MAX, LINES - k) for k in range(0, LINES, BATCH_MAX)]
        with _client(cluster) as c:
            files = [
                c.files.create(file=("input.jsonl", _input(k * BATCH_MAX, n)), purpose="batch")
                for k, n in enumerate(sizes)
            ]
            ids = [
                c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
                for f in files
            ]
        t2 = time.monotonic()
        kills, statuses = _chaos(cluster, ids, random.Random(LINES), time.monotonic() + 60 + LINES / 100)
        t3 = time.monotonic()
        for p in cluster.procs:
            if not p.alive:
                cluster.start(p)
        assert statuses == {"completed"}
        assert kills >= MIN_KILLS, f"only {kills} kills before the batches finished: raise the latency"
        seen, owned = [], {f.id for f in files}
        for bid in ids:
            done = _retrieve(cluster, bid)
            with _client(cluster) as c:
                out = c.files.content(done.output_file_id).content.splitlines() if done.output_file_id else []
                err = c.files.content(done.error_file_id).content.splitlines() if done.error_file_id else []
            seen += [json.loads(x)["custom_id"] for x in out + err]
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(err))
            owned |= {done.output_file_id, done.error_file_id} - {None}
        assert len(seen) == LINES and set(seen) == {f"r{i}" for i in range(LINES)}, "an id is missing or repeated"
        _assert_clean(scaleout, owned, timeout=GRACE + 30)
        t4 = time.monotonic()
    finally:
        cluster.stop()
    print(
        f"\nfault test: {LINES:,} lines, {kills} kill -9s, restarts {sum(p.starts - 1 for p in cluster.procs)};"
        f" start {t1 - t0:.1f} s, upload+create {t2 - t1:.1f} s, run under kills {t3 - t2:.1f} s, clean-up checked"
        f" {t4 - t3:.1f} s"
    )


def _assert_clean(where: Backend, owned: set[str], timeout: float = 30.0) -> None:
    """Within `timeout` (sweeps run every lease period, orphans older than GRACE go): the bucket holds exactly
    the files the database owns, no multipart upload is pending, no lease is live, the log is purged."""
    s3 = boto3.client("s3")
    deadline = time.monotonic() + timeout
    while True:
        keys = {o["Key"].rsplit("/", 1)[-1] for o in s3.list_objects_v2(Bucket=where.bucket).get("Contents", [])}
        uploads = s3.list_multipart_uploads(Bucket=where.bucket).get("Uploads", [])
        with psycopg.connect(where.store_url) as conn:
            leases = conn.execute(
                "SELECT COUNT(*) FROM chunks WHERE NOT done AND lease_until >= extract(epoch from clock_timestamp())"
            ).fetchone()
            left = conn.execute("SELECT (SELECT COUNT(*) FROM results) + (SELECT COUNT(*) FROM chunks)").fetchone()
        state = (keys, len(uploads), leases and leases[0], left and left[0])
        if state == (owned, 0, 0, 0):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not clean after {timeout} s: objects {sorted(keys)} (owned {sorted(owned)}), "
                f"{len(uploads)} multipart uploads, {state[2]} live leases, {state[3]} log rows"
            )
        time.sleep(0.5)
