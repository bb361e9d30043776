"""`SyncClient` against the real rate-limited upstream (`coldbatch.testing.upstream`) on 127.0.0.1.

Time is scaled down: the upstream's "minute" is a 3 s sliding window (60 requests per 3 s = 1,200
RPM), and the client is told the same window, so pacing, learned limits and retries are exercised in
a few seconds each.

"Duplicated" here means: a key reported twice by the client, or a request the upstream answered 200
*in time* more than once. An injected timeout is different: the upstream executes it and answers
after the client gave up, so the client must retry it and the upstream runs that body twice. That is
at-least-once execution, unavoidable without an idempotency key the provider honours; the upstream
counts it as `late`, and the test checks that every late run was followed by the retry that the
client reported, never by a second in-time answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from coldbatch.engines.base import Result
from coldbatch.hotpath import limits as LM
from coldbatch.hotpath.client import SyncClient
from coldbatch.protocol import limits as L
from coldbatch.testing.upstream import UpstreamServer, create_upstream

pytestmark = pytest.mark.slow
WINDOW = 3.0

Start = Callable[..., UpstreamServer]


@pytest.fixture
def upstream() -> Iterator[Start]:
    """Factory: start a fresh upstream (any create_upstream arguments); all are stopped at teardown."""
    started: list[UpstreamServer] = []

    def start(**kwargs: Any) -> UpstreamServer:
        server = UpstreamServer(create_upstream(**{"window": WINDOW, "latency": 0.01, **kwargs}))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def body(i: int, max_tokens: int = 5) -> dict[str, Any]:
    return {"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"request {i}"}]}


def body_key(b: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(b, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def run(client: SyncClient, bodies: dict[str, dict[str, Any]]) -> tuple[dict[str, list[Result]], float]:
    reported: dict[str, list[Result]] = {}

    async def go() -> float:
        async with client:
            t = time.monotonic()
            await client.run_many(
                ((k, L.CHAT, b) for k, b in bodies.items()), lambda k, r: reported.setdefault(k, []).append(r)
            )
            return time.monotonic() - t

    return reported, asyncio.run(go())


@pytest.mark.alone  # measures the pace it reaches (>= 90 % of the budget): 87-89 % beside 4 workers on 2 cores
@pytest.mark.parametrize("configured", [True, False], ids=["rpm-given", "rpm-from-headers"])
def test_requests_are_paced_to_the_budget(upstream: Start, configured: bool) -> None:
    up = upstream(rpm=60, tpm=1_000_000)
    bodies = {f"k{i}": body(i) for i in range(80)}
    client = SyncClient(up.url + "/v1", rpm=60 if configured else None, window=WINDOW, timeout=5)
    reported, _ = run(client, bodies)
    stats = up.stats()
    assert all(len(reported[k]) == 1 and reported[k][0].ok for k in bodies)
    assert stats["rate_limited"] <= 1  # ≤ ~1 %; the first request's connection set-up can cost one
    used = (stats["admitted"] - 1) / stats["admitted_span_s"] / (60 / WINDOW)
    assert 0.9 <= used <= 1.0, f"{used:.1%} of the request budget used"


def test_tokens_are_paced_to_the_budget(upstream: Start) -> None:
    bodies = {f"k{i}": body(i, max_tokens=90) for i in range(40)}
    cost = LM.request_cost(L.CHAT, bodies["k0"])
    up = upstream(rpm=10_000, tpm=30 * cost)  # tokens bind: 30 requests' worth per window (10/s)
    client = SyncClient(up.url, rpm=10_000, tpm=30 * cost, window=WINDOW, timeout=5)
    reported, elapsed = run(client, bodies)
    stats = up.stats()
    assert all(r[0].ok for r in reported.values()) and len(reported) == 40
    assert stats["rate_limited"] <= 1
    assert elapsed >= (40 - 30 * 1.0 / WINDOW - 1) / 10 * 0.95  # not a burst: at most ~a second ahead


@pytest.mark.alone  # its 0.3 s client timeout must fire before the 0.8 s hang ends: beside 4 workers on 2 cores the
# client (in this process, with the upstream) once took a hung request's late answer, counted `late` and not `ok`
def test_with_20_percent_500s_and_timeouts_no_request_is_lost_or_duplicated(upstream: Start) -> None:
    up = upstream(rpm=6000, tpm=10_000_000, error_rate=0.1, timeout_rate=0.1, hang=0.8, seed=3)
    bodies = {f"k{i}": body(i) for i in range(200)}
    client = SyncClient(up.url, rpm=6000, window=WINDOW, timeout=0.3, max_attempts=10, concurrency=32)
    reported, _ = run(client, bodies)
    stats = up.stats()
    assert set(reported) == set(bodies)  # nothing lost
    assert all(len(r) == 1 for r in reported.values())  # nothing reported twice
    assert stats["duplicates"] == []  # nothing answered in time twice
    assert stats["errors"] > 10 and stats["timeouts"] > 10  # the faults did happen
    by_body = stats["by_body"]
    for key, b in bodies.items():
        outcome = Counter(by_body[body_key(b)])
        assert reported[key][0].ok and outcome["ok"] == 1, (key, outcome)
    late = sum(Counter(c)["late"] for c in by_body.values())
    # every hidden run was a timeout we retried; on a busy machine a slow ordinary answer may time out too
    # (seen in CI: 49 client timeouts for 17 hung requests), which costs a retry, never a row
    assert late == stats["timeouts"] <= client.stats.timeouts


def test_hot_calls_pass_queued_batch_work(upstream: Start) -> None:
    up = upstream(rpm=60, tpm=1_000_000)
    cold = {f"cold{i}": body(i) for i in range(60)}  # 3 s of budget

    async def go() -> tuple[float, int]:
        done: list[str] = []
        async with SyncClient(up.url, rpm=60, window=WINDOW, timeout=5, concurrency=8) as client:
            batch = asyncio.create_task(
                client.run_many(
                    ((k, L.CHAT, b) for k, b in cold.items()), lambda k, r: done.append(k), priority=LM.COLD
                )
            )
            await asyncio.sleep(0.6)
            t = time.monotonic()
            hot = await client.call(L.CHAT, body(-1), priority=LM.HOT)
            latency = time.monotonic() - t
            behind = len(cold) - len(done)
            await batch
        assert hot.ok and len(done) == len(cold)
        return latency, behind

    latency, behind = asyncio.run(go())
    assert latency < 0.6, f"the hot call waited {latency:.2f}s"
    assert behind >= 30  # it did not queue behind the batch work that was waiting
