"""`SyncClient`: many requests to an OpenAI-compatible synchronous endpoint, within RPM/TPM budgets.

Why it exists: `coldbatch run --mode sync` and the server's relay engine both turn a pile of
request bodies into answers from a rate-limited provider. The openai SDK retries on its own and
hides the `x-ratelimit-*` headers, so this talks httpx directly and keeps one retry policy
(`limits.decide`) and one pacer (`limits.Pacer`) for every request of a client.

Guarantees:

- A request is sent only when the `Gate` admits it: highest priority first (HOT before COLD, then
  first come first served, retries keeping their place), within the pacer's budgets and at most
  `concurrency` requests in flight.
- `call` never raises for what the provider or the network did: it returns the final `Result`
  (the provider's status and JSON body, or 504 `upstream_timeout` / 502 `upstream_unreachable` when
  the last attempt got no response). Only cancellation and programming errors propagate.
- `run_many` reports every item exactly once through `on_result`, unless it is cancelled or
  `on_result` raises (then the first such error propagates and the items not yet reported never
  are: the caller's ledger decides what to resume).

A timed-out attempt may still have run at the provider; a retry then runs the request again (and is
billed again). That is unavoidable without an idempotency key the provider honours: the client
promises exactly-once *reporting*, and at-least-once execution only in that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from coldbatch.estimate import tokens as T
from coldbatch.hotpath import limits as LM
from coldbatch.protocol.lines import Result, error_result

logger = logging.getLogger(__name__)

Item = tuple[str, str, dict[str, Any]]  #: (key, endpoint, body)
OnResult = Callable[[str, Result], Awaitable[None] | None]


@dataclass
class ClientStats:
    """What happened on the wire, for logs and benchmarks."""

    attempts: int = 0
    retries: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  #: HTTP status of every attempt that got one
    timeouts: int = 0
    connection_errors: int = 0
    reported_ok: int = 0
    reported_failed: int = 0


class Gate:
    """Admits requests one at a time: priority order, the pacer's budgets, at most `limit` in flight.

    One pump task decides; waiters only wait on their future. It runs while anyone waits and exits
    when the queue is empty.

    `limit` is `concurrency`, or with `adaptive` it follows what the upstream takes at once (AIMD, as TCP
    does): a 429 halves it, once per round (refusals of requests sent before the cut are its echo, not new
    news), and every answer adds 1/limit (one more request in flight per round of answers), up to
    `concurrency`. Why: a server such as vLLM or llama.cpp's refuses what exceeds its slots with 429 and no
    Retry-After; at a fixed 32 most attempts were refused and retried (20-320 refusals for 300 requests)."""

    def __init__(
        self, pacer: LM.Pacer, concurrency: int, clock: Callable[[], float], *, adaptive: bool = False
    ) -> None:
        self.pacer, self.concurrency, self.clock, self.adaptive = pacer, concurrency, clock, adaptive
        self.limit = float(concurrency)  #: requests allowed in flight now
        self.epoch = 0  #: bumped by each cut: a refusal counts only for requests sent since the last one
        self.cuts = 0
        self.in_flight = 0
        self._queue: list[tuple[int, int, float, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def acquire(self, cost: float, priority: int, seq: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (priority, seq, cost, fut))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run(), name="coldbatch-hotpath-gate")
        self.poke()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # admitted as we were cancelled: give the slot back
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self.poke()

    def refused(self, epoch: int) -> None:
        """A 429 for a request admitted in `epoch`: halve the limit, unless it was already cut since."""
        if self.adaptive and epoch == self.epoch:
            self.limit = max(1.0, self.limit / 2)
            self.epoch += 1
            self.cuts += 1
            logger.info("upstream refused a request (429): %d in flight at most now", int(self.limit))

    def answered(self) -> None:
        """An answer that was not a refusal: one more request in flight per `limit` answers."""
        if self.adaptive and self.limit < self.concurrency:
            self.limit = min(float(self.concurrency), self.limit + 1 / self.limit)
            self.poke()

    def poke(self) -> None:
        """Something changed (a waiter, a free slot, new limits): let the pump look again."""
        self._changed.set()

    async def _run(self) -> None:
        try:
            while await self._step():
                pass
        except BaseException as exc:  # never leave a waiter hanging on a dead pump
            for *_, fut in self._queue:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("gate stopped"))
            raise

    async def _step(self) -> bool:
        """Admit the head of the queue or wait for a reason to look again; False when nobody waits."""
        self._changed.clear()
        queue = self._queue
        while queue and queue[0][3].done():
            heapq.heappop(queue)  # its caller was cancelled
        if not queue:
            return False
        _, _, cost, fut = queue[0]
        timeout: float | None = None
        if self.in_flight < (1 if self.pacer.probing else int(self.limit)):
            now = self.clock()
            timeout = self.pacer.delay(now, cost)
            if timeout <= 0:
                heapq.heappop(queue)
                self.pacer.take(now, cost)
                self.in_flight += 1
                fut.set_result(None)
                return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return True


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One attempt's outcome: a response (status, body, headers) or none (`status` None, `error` says why)."""

    status: int | None
    body: dict[str, Any]
    headers: Mapping[str, str]
    error: str = ""
    timed_out: bool = False


class SyncClient:
    """Calls an OpenAI-compatible endpoint within rate budgets, with retries; see the module docstring.

    `base_url` is the provider root (`http://host:port`) or its `/v1` URL; endpoints are paths like
    `/v1/chat/completions`. `rpm`/`tpm` cap requests/tokens per `window` seconds (None: learn them from
    the provider's headers, if it sends any). `timeout` is per attempt. `transport`, `clock` (monotonic
    seconds), `sleep` and `rng` are injectable for tests."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        max_attempts: int = 5,
        timeout: float = 600.0,
        concurrency: int = 64,
        window: float = 60.0,
        headroom: float = LM.HEADROOM,
        policy: LM.RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: LM.Random | None = None,
        counter: T.Counter | None = None,
        headers: Mapping[str, str] | None = None,
        adaptive: bool = False,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.pacer = LM.Pacer(rpm, tpm, window=window, headroom=headroom)
        self.policy = policy or LM.RetryPolicy(max_attempts=max_attempts)
        self.gate = Gate(self.pacer, concurrency, clock, adaptive=adaptive)
        self.stats = ClientStats()
        self._clock, self._sleep = clock, sleep
        self._rng: LM.Random = rng or random.Random()
        self._counter = counter or T.counter("o200k_base")
        self._seq = itertools.count()
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            headers={**auth, **(headers or {})},
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    # -- public API ---------------------------------------------------------------------------------------
    async def call(self, endpoint: str, body: dict[str, Any], *, priority: int | None = None) -> Result:
        """One request, retried per the policy; the final Result (never raises for provider/network errors).

        `priority` defaults to `limits.PRIORITY` of the calling context (HOT unless set)."""
        try:
            content = orjson.dumps(body)
        except TypeError as exc:
            return error_result(400, f"The request body cannot be encoded as JSON: {exc}")
        prio = LM.PRIORITY.get() if priority is None else priority
        cost = LM.request_cost(endpoint, body, self._counter)
        seq, url, attempt = next(self._seq), self._url(endpoint), 0
        while True:
            attempt += 1
            await self.gate.acquire(cost, prio, seq)
            epoch = self.gate.epoch
            try:
                got = await self._send(url, content)
            finally:
                self.gate.release()
            delay = self._after(got, attempt, epoch)
            if delay is None:
                return self._report(got)
            self.stats.retries += 1
            logger.debug("retrying %s in %.2fs (attempt %d: %s)", endpoint, delay, attempt, got.status or got.error)
            await self._sleep(delay)

    async def run_many(
        self,
        items: AsyncIterable[Item] | Iterable[Item],
        on_result: OnResult,
        *,
        priority: int = LM.COLD,
        max_pending: int | None = None,
    ) -> None:
        """Run every (key, endpoint, body) and hand each key's final Result to `on_result` (sync or async).

        At most `max_pending` items (default 2 x concurrency, at least 64) are taken from `items` ahead of
        their results, so an iterator over a large file is read as the work goes. Raises the first error
        of `on_result` (the rest of the work is cancelled)."""
        pending = asyncio.Semaphore(max_pending or max(64, 2 * self.gate.concurrency))

        async def one(key: str, endpoint: str, body: dict[str, Any]) -> None:
            try:
                res = await self.call(endpoint, body, priority=priority)
                done = on_result(key, res)
                if inspect.isawaitable(done):
                    await done
            finally:
                pending.release()

        try:
            async with asyncio.TaskGroup() as tg:
                async for key, endpoint, body in _aiter(items):
                    await pending.acquire()
                    tg.create_task(one(key, endpoint, body))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> SyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one attempt ----------------------------------------------------------------------------------------
    def _url(self, endpoint: str) -> str:
        if self.base_url.endswith("/v1") and endpoint.startswith("/v1/"):
            return self.base_url + endpoint[3:]
        return self.base_url + endpoint

    async def _send(self, url: str, content: bytes) -> _Attempt:
        self.stats.attempts += 1
        try:
            r = await self._http.post(url, content=content, headers={"content-type": "application/json"})
            raw = await r.aread()
        except httpx.TimeoutException as exc:
            self.stats.timeouts += 1
            return _Attempt(None, {}, {}, f"no response within {self.timeout:g}s ({type(exc).__name__})", True)
        except httpx.TransportError as exc:
            self.stats.connection_errors += 1
            return _Attempt(None, {}, {}, f"{type(exc).__name__}: {exc}")
        self.stats.statuses[r.status_code] += 1
        body = _json_body(raw)
        if body is None:  # e.g. a proxy's HTML page: keep the status, but always with an OpenAI error body
            text = raw[:500].decode("utf-8", "replace")
            status = 502 if r.status_code < 400 else r.status_code
            return _Attempt(
                status,
                {
                    "error": {
                        "message": f"The upstream answered HTTP {r.status_code} without a JSON object: {text}",
                        "type": "upstream_error",
                        "param": None,
                        "code": "invalid_upstream_body",
                    }
                },
                r.headers,
            )
        return _Attempt(r.status_code, body, r.headers)

    def _after(self, got: _Attempt, attempt: int, epoch: int) -> float | None:
        """Learn from the attempt (limits, concurrency, 429 pause); the wait before the next attempt, or None
        to stop. An adaptive gate answers a 429 without Retry-After by its cut alone: pausing every request
        as well (the fixed gate's answer) left the upstream idle for the pause after each cut."""
        now = self._clock()
        after = LM.retry_after(got.headers) if got.status is not None else None
        if got.status is not None:
            self.pacer.observe(now, got.headers)
            self.gate.poke()
        elif self.pacer.probing:
            self.pacer.probing = False  # no answer to learn from; do not stay at one request in flight
        delay = LM.decide(
            self.policy,
            attempt,
            got.status,
            self._rng,
            retry_after_s=after,
            should_retry=LM.should_retry_header(got.headers),
        )
        if got.status == 429:
            self.gate.refused(epoch)
            if after is not None or not self.gate.adaptive:  # our budget was wrong: everyone waits, not just this
                self.pacer.pause(
                    now + min(after if after is not None else self.policy.base, self.policy.max_retry_after)
                )
            self.gate.poke()
        elif got.status is not None:
            self.gate.answered()
        return delay

    def _report(self, got: _Attempt) -> Result:
        if got.status is None:
            code = "upstream_timeout" if got.timed_out else "upstream_unreachable"
            res = error_result(
                504 if got.timed_out else 502,
                f"The upstream gave no response: {got.error}",
                type_="server_error",
                code=code,
            )
        else:
            res = Result(got.status, got.body, _usage(got.body))
        if res.ok:
            self.stats.reported_ok += 1
        else:
            self.stats.reported_failed += 1
        return res


def _json_body(raw: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _usage(body: dict[str, Any]) -> dict[str, int]:
    """The body's `usage`, as the provider sent it (counts, and `*_details` objects the executor reads)."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return {}
    kept: dict[str, Any] = {k: v for k, v in usage.items() if isinstance(v, int | dict) and not isinstance(v, bool)}
    return kept


async def _aiter(items: AsyncIterable[Item] | Iterable[Item]) -> AsyncIterable[Item]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
