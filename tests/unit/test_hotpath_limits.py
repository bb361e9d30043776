"""The hot path's pure rules (pacing, headers, retry policy) with plain numbers as the clock, and
`SyncClient`/`Gate` against `httpx.MockTransport` with an injected sleep: no network, no real waiting."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from coldbatch.engines.echo import EchoEngine
from coldbatch.hotpath import limits as LM
from coldbatch.hotpath.client import Gate, SyncClient
from coldbatch.protocol import limits as L

POLICY = LM.RetryPolicy(max_attempts=5, base=0.5, cap=8.0, max_retry_after=120.0)


class TopRng:
    """An RNG that always draws the top of the range, so backoff ceilings are visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


# -- retry policy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [None, 408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_failures_are_retried(status: int | None) -> None:
    assert LM.decide(POLICY, 1, status, TopRng()) == 0.5


@pytest.mark.parametrize("status", [200, 201, 400, 401, 403, 404, 413, 422])
def test_success_and_permanent_errors_are_not(status: int) -> None:
    assert LM.decide(POLICY, 1, status, TopRng()) is None


def test_backoff_doubles_up_to_the_cap_and_attempts_are_bounded() -> None:
    delays = [LM.decide(POLICY, a, 500, TopRng()) for a in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, None]  # attempt 5 of 5 was the last
    long = LM.RetryPolicy(max_attempts=10)
    assert LM.decide(long, 9, 500, TopRng()) == 8.0


def test_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    rng = random.Random(7)
    draws = [LM.decide(POLICY, 3, None, rng) for _ in range(500)]
    assert all(d is not None and 0 <= d <= 2.0 for d in draws)
    assert min(d for d in draws if d is not None) < 0.2 and max(d for d in draws if d is not None) > 1.8


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    assert LM.decide(POLICY, 1, 429, TopRng(), retry_after_s=3.25) == 3.25
    assert LM.decide(POLICY, 1, 503, TopRng(), retry_after_s=0.0) == 0.0
    assert LM.decide(POLICY, 1, 429, TopRng(), retry_after_s=900) == 120.0
    assert LM.decide(POLICY, 5, 429, TopRng(), retry_after_s=1) is None  # still bounded by attempts
    assert LM.decide(POLICY, 1, 400, TopRng(), retry_after_s=1) is None  # and by the status


def test_x_should_retry_overrides_the_status_rule_but_not_success() -> None:
    assert LM.decide(POLICY, 1, 400, TopRng(), should_retry=True) == 0.5
    assert LM.decide(POLICY, 1, 500, TopRng(), should_retry=False) is None
    assert LM.decide(POLICY, 1, 200, TopRng(), should_retry=True) is None
    assert LM.should_retry_header({"x-should-retry": "true"}) is True
    assert LM.should_retry_header({"x-should-retry": "False"}) is False
    assert LM.should_retry_header({}) is None


# -- header parsing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("1h2m3s", 3723.0),
        ("12", 12.0),
        ("0.25", 0.25),
        ("", None),
        (None, None),
        ("soon", None),
        ("5s later", None),
    ],
)
def test_reset_durations(raw: str | None, seconds: float | None) -> None:
    got = LM.parse_duration(raw)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_retry_after_headers() -> None:
    assert LM.retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert LM.retry_after({"retry-after": "3"}) == 3.0
    assert LM.retry_after({"retry-after": "-1"}) is None
    assert LM.retry_after({}) is None
    when = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert LM.retry_after(
        {"retry-after": format_datetime(when, usegmt=True)}, now_wall=when.timestamp() - 30
    ) == pytest.approx(30)
    assert LM.retry_after({"retry-after": "Someday"}) is None


# -- pacing ---------------------------------------------------------------------------------------------------
def simulate(pacer: LM.Pacer, costs: list[int], *, lateness: float = 0.002, seed: int = 1) -> list[float]:
    """Send times of `costs`, one after the other, each as soon as the pacer allows (timers fire a bit late)."""
    rng, now, sent = random.Random(seed), 0.0, []
    for cost in costs:
        while (wait := pacer.delay(now, cost)) > 0:
            now += wait + rng.uniform(0, lateness)
        pacer.take(now, cost)
        sent.append(now)
    return sent


def most_in_any_window(times: list[float], weights: list[int], window: float) -> float:
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    return max(prefix[bisect.bisect_left(times, t + window)] - prefix[i] for i, t in enumerate(times))


def test_requests_are_paced_evenly_at_just_under_the_limit() -> None:
    sent = simulate(LM.Pacer(rpm=600), [1] * 3000)
    rate = (len(sent) - 1) / (sent[-1] - sent[0]) * 60
    assert 0.97 * 600 <= rate <= 600
    assert most_in_any_window(sent, [1] * len(sent), 60.0) <= 600
    assert sum(1 for t in sent if t < 10.0) <= 100  # no burst of the minute's budget at the start


def test_tokens_are_paced_and_a_large_request_waits_its_turn() -> None:
    costs = [random.Random(3).choice([50, 400, 2500]) for _ in range(400)]
    sent = simulate(LM.Pacer(rpm=10_000, tpm=40_000), costs)
    assert most_in_any_window(sent, costs, 60.0) <= 40_000
    tokens_per_min = sum(costs[:-1]) / (sent[-1] - sent[0]) * 60
    assert tokens_per_min >= 0.9 * 40_000


def test_a_request_larger_than_the_whole_limit_goes_alone_instead_of_blocking_forever() -> None:
    pacer = LM.Pacer(tpm=1000)
    pacer.take(0.0, 900)
    wait = pacer.delay(1.0, 5000)
    assert 0 < wait < float("inf")
    assert pacer.delay(1.0 + wait, 5000) == 0  # once the window is empty


def test_no_limit_means_no_wait_and_probing_until_the_first_answer() -> None:
    pacer = LM.Pacer()
    assert pacer.probing and pacer.delay(0, 10**9) == 0
    pacer.observe(0.0, {})
    assert not pacer.probing


def test_limits_are_learned_from_headers_and_the_lower_one_wins() -> None:
    pacer = LM.Pacer(rpm=1000)
    pacer.observe(0.0, {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "150000"})
    assert pacer.requests.limit == 600 and pacer.tokens.limit == 150000
    pacer = LM.Pacer(rpm=100)
    pacer.observe(0.0, {"x-ratelimit-limit-requests": "600"})
    assert pacer.requests.limit == 100
    learned = simulate(pacer, [1] * 300)
    assert (len(learned) - 1) / (learned[-1] - learned[0]) * 60 <= 100


def test_use_by_someone_else_on_the_same_key_slows_us_down_until_it_fades() -> None:
    pacer = LM.Pacer(rpm=600)
    simulate(pacer, [1] * 10)  # we sent 10 in the last second
    now = 1.0
    pacer.observe(
        now,
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "290",
            "x-ratelimit-reset-requests": "30s",
        },
    )  # the provider counts 310 used
    assert pacer.requests.usable(now) == pytest.approx(600 - (310 - 10 - (0.02 * 600 + 1)))
    assert pacer.requests.usable(now + 15) == pytest.approx(600 - 287 / 2)
    assert pacer.requests.usable(now + 30) == 600
    quiet = LM.Pacer(rpm=600)
    quiet.take(0.0, 1)
    quiet.observe(0.1, {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "595"})
    assert quiet.requests.usable(0.1) == 600  # within the headroom: noise, not foreign use


def test_a_pause_holds_every_send() -> None:
    pacer = LM.Pacer(rpm=600)
    pacer.pause(5.0)
    assert pacer.delay(1.0, 1) == pytest.approx(4.0)
    pacer.pause(2.0)  # an earlier end does not shorten it
    assert pacer.delay(1.0, 1) == pytest.approx(4.0)


def test_request_cost_is_prompt_tokens_plus_the_most_it_may_generate() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 100, "n": 2}
    prompt = asyncio.run(EchoEngine().complete(L.CHAT, body)).usage["prompt_tokens"]
    assert LM.request_cost(L.CHAT, body) == prompt + 200
    assert LM.request_cost(L.CHAT, {**body, "max_completion_tokens": 10, "n": 1}) == prompt + 10
    assert LM.request_cost(L.EMBEDDINGS, {"model": "m", "input": [1, 2, 3]}) == 3


# -- the gate ------------------------------------------------------------------------------------------------
def test_gate_admits_hot_before_cold_and_keeps_order_within_a_priority() -> None:
    async def scenario() -> list[str]:
        gate = Gate(LM.Pacer(rpm=1000), concurrency=1, clock=lambda: 0.0)
        order: list[str] = []
        await gate.acquire(1, LM.COLD, 0)  # holds the only slot

        async def one(name: str, prio: int, seq: int) -> None:
            await gate.acquire(1, prio, seq)
            order.append(name)
            gate.release()

        tasks = [
            asyncio.create_task(one(n, p, s))
            for n, p, s in [("cold-2", LM.COLD, 2), ("cold-1", LM.COLD, 1), ("hot-3", LM.HOT, 3)]
        ]
        await asyncio.sleep(0.01)
        gate.pacer = LM.Pacer()  # lift the rate limit (the clock is frozen); the slot is still held
        gate.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["hot-3", "cold-1", "cold-2"]


# -- SyncClient over a mock transport -------------------------------------------------------------------------
Handler = Callable[[httpx.Request], httpx.Response]
CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
OK = {
    "id": "x",
    "choices": [],
    "usage": {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "total_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 0},
    },
}


def run_client(handler: Handler, **kwargs: Any) -> tuple[Any, SyncClient, list[float]]:
    slept: list[float] = []
    clock = [100.0]

    async def sleep(s: float) -> None:  # no real waiting: the injected clock moves instead
        slept.append(s)
        clock[0] += s

    async def go() -> tuple[Any, SyncClient]:
        client = SyncClient(
            "http://upstream.test/v1",
            "sk-x",
            transport=httpx.MockTransport(handler),
            sleep=sleep,
            clock=lambda: clock[0],
            rng=TopRng(),
            **kwargs,
        )
        async with client:
            return await client.call(L.CHAT, CHAT_BODY), client

    res, client = asyncio.run(go())
    return res, client, slept


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        r = responses[min(len(seen), len(responses)) - 1]
        if isinstance(r, Exception):
            raise r
        return r

    return handler, seen


def test_a_transient_error_is_retried_then_the_answer_is_returned() -> None:
    handler, seen = scripted(httpx.Response(500, json={"error": {"message": "boom"}}), httpx.Response(200, json=OK))
    res, client, slept = run_client(handler)
    assert res.status_code == 200 and res.body == OK and res.usage["total_tokens"] == 4
    assert len(seen) == 2 and slept == [0.5]
    assert seen[0].url == "http://upstream.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-x" and seen[0].content == seen[1].content
    assert client.stats.retries == 1 and client.stats.statuses == {500: 1, 200: 1}


def test_a_permanent_error_is_returned_at_once_with_the_upstream_body() -> None:
    err = {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": "x"}}
    handler, seen = scripted(httpx.Response(400, json=err))
    res, _, slept = run_client(handler)
    assert (res.status_code, res.body, len(seen), slept) == (400, err, 1, [])


def test_timeouts_end_as_504_after_max_attempts() -> None:
    handler, seen = scripted(httpx.ReadTimeout("slow"))
    res, client, slept = run_client(handler, max_attempts=3)
    assert res.status_code == 504 and res.body["error"]["code"] == "upstream_timeout"
    assert len(seen) == 3 and slept == [0.5, 1.0] and client.stats.timeouts == 3


def test_connection_errors_end_as_502() -> None:
    handler, _ = scripted(httpx.ConnectError("refused"))
    res, client, _ = run_client(handler, max_attempts=2)
    assert res.status_code == 502 and res.body["error"]["code"] == "upstream_unreachable"
    assert client.stats.connection_errors == 2


def test_a_429_waits_retry_after_and_pauses_every_send() -> None:
    limited = httpx.Response(
        429,
        json={"error": {"message": "Rate limit reached"}},
        headers={"retry-after-ms": "1500", "x-ratelimit-limit-requests": "60"},
    )
    handler, _ = scripted(limited, httpx.Response(200, json=OK))
    res, client, slept = run_client(handler, rpm=1000)
    assert res.ok and slept == [1.5]
    assert client.pacer.paused_until == 101.5  # every send waits, on the injected clock
    assert client.pacer.requests.limit == 60  # learned from the headers


def test_a_non_json_answer_becomes_an_openai_error_body() -> None:
    handler, _ = scripted(httpx.Response(200, text="<html>gateway</html>"))
    res, _, _ = run_client(handler, max_attempts=1)
    assert res.status_code == 502 and res.body["error"]["code"] == "invalid_upstream_body"
    handler, _ = scripted(httpx.Response(404, text="nope"))
    res, _, _ = run_client(handler, max_attempts=1)
    assert res.status_code == 404 and "nope" in res.body["error"]["message"]


def test_run_many_reports_every_key_once_and_propagates_a_callback_error() -> None:
    handler, _ = scripted(httpx.Response(200, json=OK))
    items = [(f"k{i}", L.CHAT, CHAT_BODY) for i in range(50)]

    async def go(on_result: Any) -> None:
        async with SyncClient("http://u.test", transport=httpx.MockTransport(handler), concurrency=4) as c:
            await c.run_many(iter(items), on_result)

    got: list[str] = []

    async def record(key: str, res: Any) -> None:
        got.append(key)

    asyncio.run(go(record))
    assert sorted(got) == sorted(k for k, _, _ in items)

    def explode(key: str, res: Any) -> None:
        raise KeyError(key)

    with pytest.raises(KeyError):
        asyncio.run(go(explode))


def test_an_unencodable_body_is_a_400_not_a_crash() -> None:
    async def go() -> Any:
        async with SyncClient("http://u.test", transport=httpx.MockTransport(lambda r: httpx.Response(200))) as c:
            return await c.call(L.CHAT, {"messages": [], "x": {1, 2}})

    assert asyncio.run(go()).status_code == 400
