"""Benchmark: `SyncClient` (coldbatch sync mode) vs a port of OpenAI's cookbook parallel processor, at 600 RPM.

Both clients send the same N chat requests (default 5,000) to a fresh `coldbatch.testing.upstream` each
(same settings: 600 requests and 150,000 tokens per sliding 60 s window, 0.5 s latency), one after the
other, in this one invocation. The cookbook client is a straightforward port of
`examples/api_request_parallel_processor.py` (aiohttp → httpx, file → in-memory list), kept as written:
per-loop capacity refill for requests and tokens starting from a full minute, a retry queue, no
backoff, a 15 s pause after a rate-limit error, 5 attempts.

Reported per client: wall time; RPM utilisation = requests the upstream admitted / (RPM x wall minutes);
the share of requests answered 429; requests answered (ok / failed after retries); lost (never
reported) and duplicated (reported twice, or executed twice by the upstream). Prints a markdown block.

    python bench/sync_600rpm.py [--requests N] [--rpm 600] [--error-rate 0.1 --timeout-rate 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from coldbatch.estimate import tokens as T
from coldbatch.hotpath.client import SyncClient
from coldbatch.testing.upstream import UpstreamServer, create_upstream

ENDPOINT = "/v1/chat/completions"
WORDS = [
    "great",
    "product",
    "fast",
    "shipping",
    "broke",
    "after",
    "a",
    "week",
    "support",
    "was",
    "helpful",
    "would",
    "buy",
    "again",
]


def make_requests(n: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(n):
        text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(8 + i % 9))
        out.append(
            (
                f"row-{i + 1}",
                {
                    "model": "gpt-4o-mini",
                    "max_tokens": 50,
                    "messages": [
                        {"role": "system", "content": "Classify the sentiment as positive, negative or neutral."},
                        {"role": "user", "content": f"Review {i + 1}: {text}"},
                    ],
                },
            )
        )
    return out


@dataclass
class Outcome:
    wall: float = 0.0
    reported: Counter[str] = field(default_factory=Counter)  #: key -> times reported
    ok: int = 0
    failed: int = 0


# -- coldbatch ----------------------------------------------------------------------------------------------
async def run_coldbatch(url: str, reqs: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> Outcome:
    out = Outcome()

    def on_result(key: str, res: Any) -> None:
        out.reported[key] += 1
        if res.ok:
            out.ok += 1
        else:
            out.failed += 1

    async with SyncClient(
        url, "sk-bench", rpm=args.rpm, tpm=args.tpm, timeout=args.client_timeout, max_attempts=5, concurrency=64
    ) as client:
        t = time.perf_counter()
        await client.run_many(((k, ENDPOINT, b) for k, b in reqs), on_result)
        out.wall = time.perf_counter() - t
    return out


# -- the cookbook's api_request_parallel_processor.py, ported --------------------------------------------
@dataclass
class StatusTracker:
    num_tasks_started: int = 0
    num_tasks_in_progress: int = 0
    num_tasks_succeeded: int = 0
    num_tasks_failed: int = 0
    num_rate_limit_errors: int = 0
    num_api_errors: int = 0
    num_other_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass
class APIRequest:
    task_id: int
    key: str
    request_json: dict[str, Any]
    token_consumption: int
    attempts_left: int
    result: list[Any] = field(default_factory=list)

    async def call_api(
        self,
        session: httpx.AsyncClient,
        request_url: str,
        retry_queue: asyncio.Queue[APIRequest],
        status_tracker: StatusTracker,
        out: Outcome,
    ) -> None:
        error: Any = None
        try:
            response = (await session.post(request_url, json=self.request_json)).json()
            if "error" in response:
                status_tracker.num_api_errors += 1
                error = response
                if "rate limit" in response["error"].get("message", "").lower():
                    status_tracker.time_of_last_rate_limit_error = time.time()
                    status_tracker.num_rate_limit_errors += 1
                    status_tracker.num_api_errors -= 1
        except Exception as e:  # as in the cookbook: any exception is a retryable error
            status_tracker.num_other_errors += 1
            error = e
        if error:
            self.result.append(error)
            if self.attempts_left:
                retry_queue.put_nowait(self)
            else:
                out.reported[self.key] += 1
                out.failed += 1
                status_tracker.num_tasks_in_progress -= 1
                status_tracker.num_tasks_failed += 1
        else:
            out.reported[self.key] += 1
            out.ok += 1
            status_tracker.num_tasks_in_progress -= 1
            status_tracker.num_tasks_succeeded += 1


def num_tokens_consumed_from_request(request_json: dict[str, Any], counter: T.Counter) -> int:
    """The cookbook's estimate for chat completions: 4 per message + encoded values (-1 for a name) + 2, plus
    max_tokens x n."""
    completion_tokens = request_json.get("n", 1) * request_json.get("max_tokens", 15)
    num_tokens = 0
    for message in request_json["messages"]:
        num_tokens += 4
        for key, value in message.items():
            num_tokens += counter.count_many([value])[0]
            if key == "name":
                num_tokens -= 1
    num_tokens += 2
    return num_tokens + completion_tokens


def _read_next(
    requests: Any, counter: T.Counter, max_attempts: int, status_tracker: StatusTracker
) -> APIRequest | None:
    """The cookbook's "get next request (if one is not already waiting for capacity)" step; None at the end."""
    try:
        i, (key, body) = next(requests)
    except StopIteration:
        return None
    status_tracker.num_tasks_started += 1
    status_tracker.num_tasks_in_progress += 1
    return APIRequest(i, key, body, num_tokens_consumed_from_request(body, counter), max_attempts)


async def run_cookbook(url: str, reqs: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> Outcome:
    out = Outcome()
    request_url = url + ENDPOINT
    max_requests_per_minute, max_tokens_per_minute, max_attempts = args.rpm, args.tpm, 5
    seconds_to_pause_after_rate_limit_error = 15
    seconds_to_sleep_each_loop = 0.001
    counter = T.counter("cl100k_base")
    queue_of_requests_to_retry: asyncio.Queue[APIRequest] = asyncio.Queue()
    status_tracker = StatusTracker()
    next_request: APIRequest | None = None
    available_request_capacity: float = max_requests_per_minute
    available_token_capacity: float = max_tokens_per_minute
    last_update_time = time.time()
    file_not_finished = True
    requests = iter(enumerate(reqs))
    tasks: set[asyncio.Task[None]] = set()
    t = time.perf_counter()
    async with httpx.AsyncClient(
        headers={"Authorization": "Bearer sk-bench"},
        timeout=args.client_timeout,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
    ) as session:
        while True:
            if next_request is None:
                if not queue_of_requests_to_retry.empty():
                    next_request = queue_of_requests_to_retry.get_nowait()
                elif file_not_finished:
                    next_request = _read_next(requests, counter, max_attempts, status_tracker)
                    file_not_finished = next_request is not None
            current_time = time.time()
            seconds_since_update = current_time - last_update_time
            available_request_capacity = min(
                available_request_capacity + max_requests_per_minute * seconds_since_update / 60.0,
                max_requests_per_minute,
            )
            available_token_capacity = min(
                available_token_capacity + max_tokens_per_minute * seconds_since_update / 60.0, max_tokens_per_minute
            )
            last_update_time = current_time
            if next_request:
                next_request_tokens = next_request.token_consumption
                if available_request_capacity >= 1 and available_token_capacity >= next_request_tokens:
                    available_request_capacity -= 1
                    available_token_capacity -= next_request_tokens
                    next_request.attempts_left -= 1
                    task = asyncio.create_task(
                        next_request.call_api(session, request_url, queue_of_requests_to_retry, status_tracker, out)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_request = None
            if status_tracker.num_tasks_in_progress == 0:
                break
            await asyncio.sleep(seconds_to_sleep_each_loop)
            seconds_since_rate_limit_error = time.time() - status_tracker.time_of_last_rate_limit_error
            if seconds_since_rate_limit_error < seconds_to_pause_after_rate_limit_error:
                await asyncio.sleep(seconds_to_pause_after_rate_limit_error - seconds_since_rate_limit_error)
    out.wall = time.perf_counter() - t
    return out


# -- running and reporting ----------------------------------------------------------------------------------
def measure(name: str, runner: Any, reqs: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    app = create_upstream(
        args.rpm, args.tpm, args.error_rate, args.timeout_rate, args.latency, args.seed, hang=args.client_timeout + 2
    )
    with UpstreamServer(app) as up:
        out = asyncio.run(runner(up.url, reqs, args))
        stats = up.stats()
    keys = [k for k, _ in reqs]
    admitted = stats["admitted"]
    row = {
        "client": name,
        "wall_s": out.wall,
        "ok": out.ok,
        "failed": out.failed,
        "lost": sum(1 for k in keys if out.reported[k] == 0),
        "dup_reported": sum(1 for k in keys if out.reported[k] > 1),
        "dup_executed": len(stats["duplicates"]),
        "late_executions": stats["timeouts"],
        "received": stats["received"],
        "admitted": admitted,
        "429": stats["rate_limited"],
        "pct_429": 100 * stats["rate_limited"] / max(1, stats["received"]),
        "utilisation": 100 * admitted / (args.rpm * out.wall / 60),
        "ok_per_min": 60 * out.ok / out.wall,
    }
    print(f"{name}: {row}", file=sys.stderr, flush=True)
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cmd = "python bench/sync_600rpm.py " + " ".join(sys.argv[1:])
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    lines = [
        f"### Sync mode at {args.rpm} RPM: {args.requests:,} requests ({dt.date.today().isoformat()})",
        "",
        f"- Command: `{cmd.strip()}`",
        f"- Machine: {machine}",
        f"- Upstream: `coldbatch.testing.upstream`, {args.rpm} requests and {args.tpm:,} tokens per sliding "
        f"60 s, latency {args.latency} s, injected 500s {args.error_rate:.0%}, timeouts {args.timeout_rate:.0%}; "
        f"a fresh instance per client, in-process (uvicorn thread)",
        "",
        "| client | wall | RPM utilisation | 429s | answered ok / failed | lost | duplicated "
        "(reported / executed) | upstream admitted / received |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['client']} | {r['wall_s']:.1f} s | {r['utilisation']:.1f} % | {r['429']:,} "
            f"({r['pct_429']:.2f} %) | {r['ok']:,} / {r['failed']:,} | {r['lost']} | "
            f"{r['dup_reported']} / {r['dup_executed']} | {r['admitted']:,} / {r['received']:,} |"
        )
    if len(rows) == 2 and rows[0]["wall_s"] and rows[1]["wall_s"]:
        lines += [
            "",
            f"Ratio: coldbatch finished in {rows[0]['wall_s'] / rows[1]['wall_s']:.2f}x the cookbook's "
            f"wall time ({rows[1]['wall_s'] / rows[0]['wall_s']:.2f}x its throughput); "
            f"the ideal at an even {args.rpm} RPM is {args.requests / args.rpm * 60:.0f} s.",
        ]
    lines.append(
        "RPM utilisation = requests the upstream admitted / (RPM x wall minutes). A sliding window admits a "
        "whole minute's budget at once, so a client that bursts can exceed 100 % on a run of a few minutes; "
        "its steady rate after the first minute is still at most the limit."
    )
    if any(r["late_executions"] for r in rows):
        lines.append(
            "Timed-out attempts that the upstream executed anyway (then retried): "
            + ", ".join(f"{r['client']} {r['late_executions']}" for r in rows)
            + "."
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--rpm", type=int, default=600)
    p.add_argument("--tpm", type=int, default=150_000)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--timeout-rate", type=float, default=0.0)
    p.add_argument("--client-timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["coldbatch", "cookbook"])
    args = p.parse_args()
    reqs = make_requests(args.requests)
    rows = []
    if args.only != "cookbook":
        rows.append(measure("coldbatch SyncClient", run_coldbatch, reqs, args))
    if args.only != "coldbatch":
        rows.append(measure("cookbook parallel processor (port)", run_cookbook, reqs, args))
    print(report(rows, args))


if __name__ == "__main__":
    main()
