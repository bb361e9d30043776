"""Scale-out benchmarks (issue 12), every process real, on loopback:

1. scaling: one `serve --no-execute` + N `worker`s (N = 1, 2, 4, 8) on PostgreSQL + S3, echo fixture with
   20 ms per request and `--concurrency` requests at once per worker (latency-bound, so 2 cores can show
   it); each N runs `--lines-per-worker` x N lines in chunks of 500, and its req/s is compared with N x the
   1-worker req/s (goal: >= 0.85 x linear).
2. PostgreSQL + S3 with one worker vs the SQLite server, instant echo, one `--lines` batch each, in
   alternation in the same run (goal: >= 50 %).

req/s = lines / (time the batch was first seen `in_progress` -> all lines counted), polled every 50 ms.
Needs a PostgreSQL and an S3 server: --pg postgresql://postgres@127.0.0.1:PORT/postgres and
--s3 http://127.0.0.1:PORT (moto_server), or the COLDBATCH_TEST_* variables of tests/_scaleout_infra.py.

    python bench/scaleout.py --pg postgresql://postgres@127.0.0.1:55432/postgres --s3 http://127.0.0.1:55433
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx
import psycopg
from _common import free_port
from openai import OpenAI

from coldbatch.testing.cluster import CLI, Cluster

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def batch_file(n: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": f"Customer feedback number {i}: the delivery was late."}],
                },
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def run_batch(base_url: str, data: bytes, timeout: float = 1800) -> float:
    """Upload, create, poll; the batch's req/s (first seen in_progress -> every line counted)."""
    client = OpenAI(base_url=base_url + "/v1", api_key="sk-bench", max_retries=5)
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    started = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(b.id)
        now = time.monotonic()
        if started is None and b.status != "validating":
            started = now
        c = b.request_counts
        if (c is not None and c.total and c.completed + c.failed >= c.total) or b.status in TERMINAL:
            assert b.status in ("in_progress", "finalizing", "completed"), b.status
            assert c is not None and c.failed == 0, c
            return c.total / (now - (started or now) or 1e-9)
        time.sleep(0.05)
    raise TimeoutError(b.id)


def fresh_backend(pg: str) -> tuple[str, str, str]:
    schema, bucket = "bench_" + secrets.token_hex(4), "bench-" + secrets.token_hex(4)
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{schema}", f"s3://{bucket}/b", schema


def drop(pg: str, schema: str) -> None:
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def scaling(args: argparse.Namespace, work: Path) -> list[tuple[int, float]]:
    out = []
    for n in args.workers:
        store, blobs, schema = fresh_backend(args.pg)
        cluster = Cluster(
            store,
            blobs,
            work,
            engine_options=["latency=0.02", f"max_concurrency={args.concurrency}"],
            lease_seconds=10,
            serve_args=["--chunk-lines", "500"],
        )
        serve = cluster.add_serve()
        for _ in range(n):
            cluster.add_worker()
        try:
            cluster.start_all()
            cluster.wait_workers()  # every worker connected: the figure is N workers', not their start-up
            rps = run_batch(serve.url, batch_file(args.lines_per_worker * n))
        finally:
            cluster.stop()
            drop(args.pg, schema)
        out.append((n, rps))
        print(f"  {n} worker(s): {rps:,.0f} req/s", flush=True)
    return out


def sqlite_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "serve", "--engine", "echo", "--port", str(port), "--data-dir", str(work / f"sqlite-{port}")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the SQLite server did not start")


def versus_sqlite(args: argparse.Namespace, work: Path) -> list[tuple[str, float]]:
    data, out = batch_file(args.lines), []
    for _ in range(args.runs):
        proc, url = sqlite_server(work)
        try:
            out.append(("sqlite", run_batch(url, data)))
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"  SQLite + folder: {out[-1][1]:,.0f} req/s", flush=True)
        store, blobs, schema = fresh_backend(args.pg)
        cluster = Cluster(store, blobs, work, lease_seconds=30)
        serve = cluster.add_serve()
        cluster.add_worker()
        try:
            cluster.start_all()
            cluster.wait_workers()
            out.append(("postgres", run_batch(serve.url, data)))
        finally:
            cluster.stop()
            drop(args.pg, schema)
        print(f"  PostgreSQL + S3, 1 worker: {out[-1][1]:,.0f} req/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=os.environ.get("COLDBATCH_TEST_POSTGRES_URL"))
    ap.add_argument("--s3", default=os.environ.get("COLDBATCH_TEST_S3_ENDPOINT"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--concurrency", type=int, default=4, help="echo requests at once per worker")
    ap.add_argument("--lines-per-worker", type=int, default=4000)
    ap.add_argument("--lines", type=int, default=50_000, help="batch size of the SQLite comparison")
    ap.add_argument("--runs", type=int, default=1, help="alternations of the SQLite comparison")
    ap.add_argument("--skip", choices=["scaling", "sqlite"], action="append", default=[])
    args = ap.parse_args()
    if not args.pg or not args.s3:
        sys.exit("give --pg and --s3 (or COLDBATCH_TEST_POSTGRES_URL / COLDBATCH_TEST_S3_ENDPOINT)")
    os.environ.update({"AWS_ENDPOINT_URL": args.s3, "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    with tempfile.TemporaryDirectory(prefix="cb-scaleout-") as tmp:
        work = Path(tmp)
        if "scaling" not in args.skip:
            print(f"scaling (echo 20 ms, {args.concurrency} at once per worker, {args.lines_per_worker} lines/worker):")
            res = scaling(args, work)
            base = res[0][1] / res[0][0]
            for n, rps in res:
                print(
                    f"  {n}: {rps:,.0f} req/s = {rps / (base * n):.2f} x linear"
                    f" [{'PASS' if rps >= 0.85 * base * n else 'FAIL'} >= 0.85]"
                )
        if "sqlite" not in args.skip:
            print(f"instant echo, {args.lines:,} lines: SQLite server vs PostgreSQL + S3 with one worker:")
            res2 = versus_sqlite(args, work)
            sq = statistics.median(r for k, r in res2 if k == "sqlite")
            pg = statistics.median(r for k, r in res2 if k == "postgres")
            print(
                f"  median SQLite {sq:,.0f} req/s, PostgreSQL + S3 {pg:,.0f} req/s = {pg / sq:.0%}"
                f" [{'PASS' if pg >= 0.5 * sq else 'FAIL'} >= 50 %]"
            )


if __name__ == "__main__":
    main()
