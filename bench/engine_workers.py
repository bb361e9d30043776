"""Benchmark: batch throughput with 1..N engine worker processes (`coldbatch serve --engine-workers N`).

Two engines, each through a real `coldbatch serve` subprocess and the official openai SDK:
- the `echo` TEST FIXTURE with 20 ms per request and one request at a time per worker
  (`--engine-option max_concurrency=1`): measures the pool's dispatch, not a model; goal ≥ 0.9 × N;
- the `llama-cpp` engine (SmolLM2-135M, greedy, label grammar) on airline tweets, 1 worker with every core
  vs one worker per core.
The rate is the slope of the completed count over time while the batch runs (from 10 % to 90 % done),
so validation and file writing are left out. Each configuration runs `--repeat` times, alternating; the
median is reported.
Usage: python bench/engine_workers.py [--echo-workers 1,2,4,8] [--llama-workers 1,2] [--tweets 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port
from llamacpp_engine import RESPONSE_FORMAT, load_rows, messages

ECHO_LATENCY = 0.02


def batch_rate(args: list[str], bodies: list[dict], work: Path) -> float:
    """Requests/s of one batch of `bodies` on a `coldbatch serve ARGS` subprocess."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(work / f"srv-{port}"),
            *args,
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench")
        for _ in range(600):
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        path = work / f"batch-{port}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}) + "\n"
                for i, b in enumerate(bodies)
            )
        )
        with path.open("rb") as fh:
            f = client.files.create(file=fh, purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        samples: list[tuple[float, int]] = []
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.05)
            b = client.batches.retrieve(b.id)
            samples.append((time.perf_counter(), b.request_counts.completed))
        assert b.status == "completed" and b.request_counts.completed == len(bodies), b
        n = len(bodies)
        lo = next(s for s in samples if s[1] >= 0.1 * n)
        hi = next(s for s in samples if s[1] >= 0.9 * n)
        return (hi[1] - lo[1]) / (hi[0] - lo[0])
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def median_rates(configs: dict[str, tuple[list[str], list[dict]]], repeat: int, work: Path) -> dict[str, float]:
    rates: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(repeat):
        for name, (args, bodies) in configs.items():  # alternate: the VM's speed drifts within minutes
            rates[name].append(batch_rate(args, bodies, work))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--echo-workers", default="1,2,4,8")
    ap.add_argument("--llama-workers", default="1,2")
    ap.add_argument("--tweets", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=4.0, help="echo: batch length at the ideal rate")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    echo_ns = [int(x) for x in a.echo_workers.split(",") if x]
    llama_ns = [int(x) for x in a.llama_workers.split(",") if x]
    echo = {
        f"echo {n}": (
            [
                "--engine",
                "echo",
                "--echo-latency",
                str(ECHO_LATENCY),
                "--engine-workers",
                str(n),
                "--engine-option",
                "max_concurrency=1",
            ],
            [
                {"model": "m", "messages": [{"role": "user", "content": f"r{i}"}]}
                for i in range(int(a.seconds * n / ECHO_LATENCY))
            ],
        )
        for n in echo_ns
    }
    rows = load_rows(a.tweets)
    label_bodies = [
        {
            "model": "SmolLM2-135M-Instruct",
            "messages": messages(r),
            "temperature": 0,
            "max_tokens": 32,
            "response_format": RESPONSE_FORMAT,
        }
        for r in rows
    ]
    llama = {
        f"llama {n}": (
            ["--engine", "llama-cpp", "--engine-workers", str(n), "--engine-option", f"n_threads={max(1, cores // n)}"],
            label_bodies,
        )
        for n in llama_ns
    }
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        echo_rates = median_rates(echo, a.repeat, Path(d)) if echo else {}
        llama_rates = median_rates(llama, a.repeat, Path(d)) if llama else {}
    print(f"""### Engine worker processes: batch throughput by number of workers

- command: `python bench/engine_workers.py --echo-workers {a.echo_workers} --llama-workers {a.llama_workers} \
--tweets {a.tweets} --repeat {a.repeat}`; {cores} usable cores, {platform.machine()}, Python \
{platform.python_version()}; {time.strftime("%Y-%m-%d")}; load average at start {load:.2f}; median of {a.repeat} \
alternating runs; rate = completed-count slope from 10 % to 90 % of the batch

| engine | workers | req/s | × one worker | ideal |
|---|---:|---:|---:|---:|""")
    one = echo_rates.get("echo 1")
    for n in echo_ns:
        r = echo_rates[f"echo {n}"]
        print(
            f"| echo fixture, {ECHO_LATENCY * 1000:.0f} ms/request, 1 in flight per worker | {n} | {r:.1f} | "
            f"{r / one:.2f}× | {n}× ({n / ECHO_LATENCY:.0f} req/s) |"
            if one
            else f"| echo | {n} | {r:.1f} | | |"
        )
    first = llama_rates.get(f"llama {llama_ns[0]}") if llama_ns else None
    for n in llama_ns:
        r = llama_rates[f"llama {n}"]
        print(
            f"| llama-cpp SmolLM2-135M, {a.tweets} tweets, label grammar, {max(1, cores // n)} thread(s) each | "
            f"{n} | {r:.2f} | {r / first:.2f}× | |"
        )


if __name__ == "__main__":
    main()
