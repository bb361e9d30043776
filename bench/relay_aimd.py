"""Benchmark (issue 15, item 10): the relay against an upstream that takes few requests at once (429 beyond
them, no Retry-After, as vLLM's or llama.cpp's server): adaptive in-flight limit (AIMD) vs the fixed limit with
its pause on every 429, alternating, `--rounds` each; time for `--requests` requests and refusals per request.

    python bench/relay_aimd.py --requests 300 --slots 4 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from test_relay_concurrency import limited_upstream  # the same loopback upstream the test uses

from coldbatch.engines.relay import RelayEngine
from coldbatch.testing.upstream import UpstreamServer


def one(requests: int, slots: int, adaptive: bool) -> tuple[float, int]:
    state: dict[str, Any] = {"in_flight": 0, "refused": 0, "served": 0, "peak_late": 0, "late": 0.0, "limit": slots}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with UpstreamServer(limited_upstream(state)) as up:
        engine = RelayEngine(up.url + "/v1", rpm=1_000_000, concurrency=32, max_attempts=30, adaptive=adaptive)

        async def go() -> list[int]:
            try:
                done = await asyncio.gather(*(engine.complete("/v1/chat/completions", body) for _ in range(requests)))
                return [r.status_code for r in done]
            finally:
                await engine.aclose()

        started = time.perf_counter()
        statuses = asyncio.run(asyncio.wait_for(go(), 300))
        elapsed = time.perf_counter() - started
    assert statuses == [200] * requests, "some requests failed"
    return elapsed, state["refused"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--slots", type=int, default=4, help="requests the upstream takes at once")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, int]]] = {"adaptive": [], "fixed": []}
    for _ in range(args.rounds):
        for name in runs:
            runs[name].append(one(args.requests, args.slots, name == "adaptive"))
    print(
        f"### relay, {args.requests} requests, upstream takes {args.slots} at once, concurrency 32 "
        f"(`python bench/relay_aimd.py`); load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| relay | time, median (runs) | refusals per request, median |\n|---|---:|---:|")
    for name, v in runs.items():
        times = ", ".join(f"{t:.2f}" for t, _ in v)
        print(
            f"| {name} | {statistics.median(t for t, _ in v):.2f} s ({times}) | "
            f"{statistics.median(r for _, r in v) / args.requests:.2f} |"
        )


if __name__ == "__main__":
    main()
