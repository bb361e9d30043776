"""A rate-limited, fault-injecting OpenAI-compatible upstream: a TEST AND BENCHMARK FIXTURE.

Shipped in the package so that tests, benchmarks and users' own tests share one. It answers
/v1/chat/completions (and embeddings, completions, responses) like the echo engine, and behaves like
a strict provider:

- A sliding window of `window` seconds (60 by default: RPM/TPM) counts admitted requests and their
  tokens (prompt + max output tokens, the same `hotpath.limits.request_cost` the client paces with).
  A request that would exceed either limit gets 429 with `retry-after`/`retry-after-ms` (when it
  would fit) and is not counted. A request larger than the whole token limit gets 400.
- Every response carries OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers;
  reset is the time until the window is empty again ("resets to its initial state").
- Of the admitted requests, a seeded fraction `error_rate` gets 500 and a fraction `timeout_rate`
  hangs for `hang` seconds (longer than the client's timeout) and is then *executed* and answered
  200, as a slow provider does, after the client has given up.

`GET /stats` counts outcomes: received, ok, rate_limited, errors, timeouts, refused (4xx), and per
request body (hash of its canonical JSON) how often each outcome happened. `duplicates` lists the
bodies answered 200 in time more than once. An injected timeout is counted as `late`, not `ok`: it
ran at the provider but its answer never reached the client, which therefore had to retry it. That
is the one repetition a client cannot avoid, and it is reported, not hidden.

`UpstreamServer(app)` runs the app under uvicorn on 127.0.0.1 (a free port) in a background thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coldbatch.engines.echo import EchoEngine
from coldbatch.estimate import tokens as T
from coldbatch.hotpath.limits import SlidingWindow, request_cost
from coldbatch.protocol import limits as L

ENDPOINTS = (L.CHAT, L.EMBEDDINGS, L.COMPLETIONS, L.RESPONSES)


@dataclass
class UpstreamState:
    """The upstream's limits, windows and counters (lives in the server's event loop)."""

    rpm: int
    tpm: int
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    latency: float = 0.0
    hang: float = 5.0
    window: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    counts: Counter[str] = field(default_factory=Counter)
    by_body: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    first_admitted: float | None = None
    last_admitted: float | None = None
    requests: SlidingWindow = field(init=False)
    tokens: SlidingWindow = field(init=False)

    def __post_init__(self) -> None:
        self.requests, self.tokens = SlidingWindow(self.window), SlidingWindow(self.window)

    def count(self, body_key: str, outcome: str) -> None:
        self.counts[outcome] += 1
        self.by_body[body_key][outcome] += 1

    def headers(self, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, win, limit in (("requests", self.requests, self.rpm), ("tokens", self.tokens, self.tpm)):
            used, newest = win.total(now), win.newest()
            reset = max(0.0, newest + self.window - now) if newest is not None else 0.0
            out |= {
                f"x-ratelimit-limit-{name}": str(limit),
                f"x-ratelimit-remaining-{name}": str(max(0, int(limit - used))),
                f"x-ratelimit-reset-{name}": _duration(reset),
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        first, last = self.first_admitted, self.last_admitted
        span = last - first if first is not None and last is not None else 0.0
        return {
            "received": self.counts["received"],
            "ok": self.counts["ok"],
            "rate_limited": self.counts["rate_limited"],
            "errors": self.counts["error"],
            "timeouts": self.counts["late"],
            "refused": self.counts["refused"],
            "admitted": self.counts["admitted"],
            "admitted_span_s": span,
            "duplicates": sorted(k for k, c in self.by_body.items() if c["ok"] > 1),
            "by_body": {k: dict(c) for k, c in self.by_body.items()},
        }


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:.3f}s"


def _error(status: int, message: str, type_: str, code: str | None, headers: dict[str, str]) -> Response:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}, status_code=status, headers=headers
    )


def create_upstream(
    rpm: int,
    tpm: int,
    error_rate: float = 0.0,
    timeout_rate: float = 0.0,
    latency: float = 0.0,
    seed: int = 0,
    *,
    hang: float = 5.0,
    window: float = 60.0,
) -> Starlette:
    """The upstream app. `rpm`/`tpm` are per `window` seconds. The state is `app.state.upstream`."""
    if min(error_rate, timeout_rate) < 0 or error_rate + timeout_rate > 1:
        raise ValueError("error_rate and timeout_rate must be fractions that add up to at most 1")
    state = UpstreamState(rpm, tpm, error_rate, timeout_rate, latency, min(hang, 60.0), window, random.Random(seed))
    echo = EchoEngine(max_concurrency=1_000_000)
    counter = T.counter("o200k_base")

    async def complete(request: Request) -> Response:
        state.counts["received"] += 1
        endpoint = request.url.path
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            state.counts["refused"] += 1
            return _error(400, "The request body must be a JSON object.", "invalid_request_error", None, {})
        key = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]
        cost = request_cost(endpoint, body, counter)
        now = state.clock()
        refusal = _over_limit(state, key, cost, now)
        return refusal if refusal is not None else await _admitted(state, echo, endpoint, body, key, cost, now)

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    routes = [Route(p, complete, methods=["POST"]) for p in ENDPOINTS] + [Route("/stats", stats, methods=["GET"])]
    app = Starlette(routes=routes)
    app.state.upstream = state
    return app


def _over_limit(state: UpstreamState, key: str, cost: int, now: float) -> Response | None:
    """The 400 (larger than the whole token limit) or 429 (the window is full) this request gets; None: admit it."""
    if cost > state.tpm:
        state.count(key, "refused")
        return _error(
            400,
            f"Request too large: {cost} tokens, limit {state.tpm} per window.",
            "invalid_request_error",
            "request_too_large",
            state.headers(now),
        )
    wait_r, wait_t = state.requests.wait(now, 1, state.rpm), state.tokens.wait(now, cost, state.tpm)
    if wait_r > 0 or wait_t > 0:
        state.count(key, "rate_limited")
        wait, kind = max((wait_r, "requests"), (wait_t, "tokens"))
        limit = state.rpm if kind == "requests" else state.tpm
        headers = {
            **state.headers(now),
            "retry-after": str(math.ceil(wait)),
            "retry-after-ms": f"{wait * 1000:.0f}",
        }
        return _error(
            429,
            f"Rate limit reached for {kind} (limit {limit} per {state.window:g}s). Please try again in {wait:.3f}s.",
            kind,
            "rate_limit_exceeded",
            headers,
        )
    return None


async def _admitted(
    state: UpstreamState, echo: EchoEngine, endpoint: str, body: dict[str, Any], key: str, cost: int, now: float
) -> Response:
    """Count an admitted request in the windows, then fail it, hang it or answer it as drawn."""
    state.requests.add(now, 1)
    state.tokens.add(now, cost)
    state.counts["admitted"] += 1
    state.first_admitted = now if state.first_admitted is None else state.first_admitted
    state.last_admitted = now
    headers = state.headers(now)
    draw = state.rng.random()
    if draw < state.error_rate:
        state.count(key, "error")
        return _error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            headers,
        )
    late = draw < state.error_rate + state.timeout_rate
    await asyncio.sleep(state.hang if late else state.latency)
    result = await echo.complete(endpoint, body)
    state.count(key, "late" if late else "ok" if result.ok else "refused")
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


class UpstreamServer:
    """An ASGI app under uvicorn on 127.0.0.1 (a free port) in a daemon thread; `start()`/`stop()`, or `with`.

    Any ASGI app works (`lifespan="on"` for one that needs its lifespan, like `coldbatch serve`'s)."""

    def __init__(self, app: Any, *, lifespan: Literal["on", "off"] = "off", start_timeout: float = 10.0) -> None:
        import uvicorn

        self.app = app
        self._start_timeout = start_timeout
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan=lifespan,
            timeout_graceful_shutdown=1,
            loop="asyncio",
            http="h11",
            ws="none",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="coldbatch-upstream", daemon=True)
        self.url = ""

    def start(self) -> str:
        """Start serving; returns the root URL (http://127.0.0.1:PORT)."""
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the upstream server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)

    def stats(self) -> dict[str, Any]:
        """GET /stats (served by the server's own loop, so the counters are read consistently)."""
        import httpx

        return dict(httpx.get(self.url + "/stats", timeout=10).json())

    def __enter__(self) -> UpstreamServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
