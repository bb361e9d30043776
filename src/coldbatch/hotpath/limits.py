"""Rate budgets and retry timing for synchronous calls: the pure rules, no I/O and no event loop.

Why it exists: providers count requests and tokens over a sliding minute (OpenAI's `x-ratelimit-*`
headers, RPM/TPM tiers). Sending a minute's budget at once gets it admitted and then 429s for the
rest of that minute; pacing evenly at just under the limit keeps 429s near zero and still uses ~98 %
of the budget. Everything here takes the time as an argument, so it is tested with plain numbers.

Guarantees:

- `Budget.delay(now, cost)` is 0 only when sending `cost` now keeps the budget: requests leave at
  most one every `window / (limit * headroom)` seconds (GCRA: a "theoretical arrival time" that
  each send pushes forward by its cost), and never more than `limit` in any `window` of our own send
  times. A cost larger than the whole limit is let through alone (the provider refuses it, and the
  refusal is the caller's per-request error) rather than blocking everything behind it forever.
- Limits come from the caller (`--rpm`/`--tpm`) and from `x-ratelimit-limit-*` headers, whichever is
  lower; `x-ratelimit-remaining-*`/`-reset-*` hold sends back when the provider says the budget is
  spent by someone else too (see `Budget`); a 429's Retry-After pauses every send (`Pacer.pause`).
- `decide()` is the one retry policy (STYLE rule 10): retry 408, 409, 429, >= 500, timeouts and
  connection errors, at most `max_attempts` attempts in all, waiting Retry-After (capped) when the
  provider gives one, else exponential backoff with full jitter from an injected RNG.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol

from coldbatch.estimate import tokens as T
from coldbatch.estimate.accounting import prompt_texts

HOT: Final = 0  #: a caller is waiting for this answer (the server's own sync endpoints): goes first
COLD: Final = 1  #: batch work: takes whatever budget hot requests leave
#: Priority of `RelayEngine.complete` calls made in this context (HOT unless a caller sets COLD, as a
#: batch executor lane can with `PRIORITY.set(COLD)`: the Engine protocol itself carries no priority).
PRIORITY: ContextVar[int] = ContextVar("coldbatch_hotpath_priority", default=HOT)

HEADROOM: Final = 0.98  #: pace at this share of a limit: margin for arrival jitter at the provider
RETRY_STATUSES: Final = frozenset({408, 409, 429})
_OUTPUT_KEYS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")


# -- token cost of one request -----------------------------------------------------------------------------
def request_cost(endpoint: str, body: dict[str, Any], counter: T.Counter | None = None) -> int:
    """Tokens a request counts against a TPM limit: its prompt tokens plus the most it may generate
    (`max_completion_tokens`/`max_tokens`/`max_output_tokens`, times `n`), as OpenAI counts them."""
    texts, overhead = prompt_texts(body, endpoint)
    prompt = sum((counter or T.counter("o200k_base")).count_many(texts)) + overhead
    out: int = next((body[k] for k in _OUTPUT_KEYS if isinstance(body.get(k), int)), 0)
    n: int = body["n"] if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    return prompt + max(0, out) * n


# -- a sliding window of what was sent ---------------------------------------------------------------------
@dataclass
class SlidingWindow:
    """Costs sent in the last `length` seconds (the provider's own view of a "minute")."""

    length: float = 60.0
    _log: deque[tuple[float, float]] = field(default_factory=deque)
    _sum: float = 0.0

    def expire(self, now: float) -> None:
        log = self._log
        while log and log[0][0] <= now - self.length:
            self._sum -= log.popleft()[1]
        if not log:
            self._sum = 0.0  # no float drift once empty

    def total(self, now: float) -> float:
        self.expire(now)
        return self._sum

    def add(self, now: float, cost: float) -> None:
        self._log.append((now, cost))
        self._sum += cost

    def wait(self, now: float, cost: float, limit: float, slack: float = 0.0) -> float:
        """Seconds until `cost` more fits under `limit` (0: now), plus `slack` when it has to wait for old
        entries to leave (so a send is not timed to the very edge of the provider's window). A cost above
        `limit` fits an empty window."""
        self.expire(now)
        excess = self._sum + cost - limit
        if excess <= 0 or not self._log:
            return 0.0
        if cost > limit:
            return self._log[-1][0] + self.length + slack - now
        freed = 0.0
        for t, c in self._log:
            freed += c
            if freed >= excess:
                return t + self.length + slack - now
        return self._log[-1][0] + self.length + slack - now  # pragma: no cover - the loop always frees enough

    def newest(self) -> float | None:
        return self._log[-1][0] if self._log else None


# -- one budget (requests or tokens) ------------------------------------------------------------------------
@dataclass
class Budget:
    """A limit per `window`, paced evenly. `limit` None means unlimited (nothing configured or learned).

    The provider's `x-ratelimit-remaining-*` tells how much of the limit is used; what it counts beyond
    what we sent ourselves in the window is *foreign* use (another process on the same key). We pace at
    `limit - foreign`, letting the foreign share fade out over the provider's `x-ratelimit-reset-*` time."""

    configured: float | None = None
    window: float = 60.0
    headroom: float = HEADROOM
    burst_s: float = 0.0  #: how far ahead of the even pace a send may go
    learned: float | None = None  #: from x-ratelimit-limit-*
    _tat: float = -math.inf  #: theoretical arrival time of the next send (GCRA)
    _sent: SlidingWindow = field(init=False)
    _foreign: float = 0.0
    _foreign_at: float = 0.0
    _foreign_fade: float | None = None  #: seconds until the foreign use is gone (the provider's reset)

    def __post_init__(self) -> None:
        self._sent = SlidingWindow(self.window)

    @property
    def limit(self) -> float | None:
        known = [x for x in (self.configured, self.learned) if x is not None and x > 0]
        return min(known) if known else None

    def foreign(self, now: float) -> float:
        if not self._foreign:
            return 0.0
        if self._foreign_fade:
            return self._foreign * max(0.0, 1 - (now - self._foreign_at) / self._foreign_fade)
        return self._foreign

    def usable(self, now: float) -> float | None:
        """The share of the limit that is ours now (None: unlimited); never below one unit."""
        limit = self.limit
        return None if limit is None else max(min(1.0, limit), limit - self.foreign(now))

    def delay(self, now: float, cost: float) -> float:
        usable = self.usable(now)
        if usable is None:
            return 0.0
        pace = self._tat - self.burst_s - now
        # when the window is full, wait for old sends to leave plus half the headroom (1 % of the window):
        # the provider counts arrivals, which jitter by milliseconds around our send times
        slack = (1 - self.headroom) / 2 * self.window
        return max(0.0, pace, self._sent.wait(now, cost, usable, slack))

    def take(self, now: float, cost: float) -> None:
        usable = self.usable(now)
        if usable is not None:
            self._tat = max(self._tat, now) + cost * self.window / (usable * self.headroom)
            self._sent.add(now, cost)

    def observe(self, now: float, limit: float | None, remaining: float | None, reset: float | None) -> None:
        """Fold in what the provider reported in its x-ratelimit-* headers."""
        if limit is not None and limit > 0:
            self.learned = limit
        full = self.limit
        if remaining is None or full is None:
            return
        # Our own window is read at the response, the provider's at admission: they differ by what was
        # sent meanwhile. Differences within the headroom (plus one unit) are that noise, not foreign use.
        noise = (1 - self.headroom) * full + 1
        self._foreign = max(0.0, full - remaining - self._sent.total(now) - noise)
        self._foreign_at, self._foreign_fade = now, reset if reset and reset > 0 else None


# -- both budgets, plus the pause after a 429 ---------------------------------------------------------------
@dataclass
class Pacer:
    """Requests-per-window and tokens-per-window budgets, paced together."""

    rpm: float | None = None
    tpm: float | None = None
    window: float = 60.0
    headroom: float = HEADROOM
    requests: Budget = field(init=False)
    tokens: Budget = field(init=False)
    paused_until: float = -math.inf
    #: True until the first response when no limit was configured: send one request to learn the limits
    probing: bool = field(init=False)

    def __post_init__(self) -> None:
        # a send may run 20 ms ahead of the even pace, so that timer lateness is made up rather than lost
        self.requests = Budget(self.rpm, self.window, self.headroom, burst_s=0.02)
        self.tokens = Budget(self.tpm, self.window, self.headroom, burst_s=0.02)
        self.probing = self.rpm is None and self.tpm is None

    def delay(self, now: float, cost: float) -> float:
        """Seconds to wait before one request of `cost` tokens may be sent (0: send now)."""
        return max(0.0, self.paused_until - now, self.requests.delay(now, 1), self.tokens.delay(now, cost))

    def take(self, now: float, cost: float) -> None:
        self.requests.take(now, 1)
        self.tokens.take(now, cost)

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    def observe(self, now: float, headers: Mapping[str, str]) -> None:
        """Learn from one response's headers (any status). Ends probing."""
        self.probing = False
        for name, budget in (("requests", self.requests), ("tokens", self.tokens)):
            budget.observe(
                now,
                _number(headers.get(f"x-ratelimit-limit-{name}")),
                _number(headers.get(f"x-ratelimit-remaining-{name}")),
                parse_duration(headers.get(f"x-ratelimit-reset-{name}")),
            )


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|us|µs|ns|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str | None) -> float | None:
    """Seconds in an x-ratelimit-reset value: OpenAI's "6m0s", "1.5s", "20ms", or a bare number of seconds."""
    if not value:
        return None
    value = value.strip()
    plain = _number(value)
    if plain is not None:
        return plain
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def retry_after(headers: Mapping[str, str], now_wall: float | None = None) -> float | None:
    """Seconds the provider asks us to wait: `retry-after-ms`, else `retry-after` (seconds or HTTP date)."""
    ms = _number(headers.get("retry-after-ms"))
    if ms is not None and ms >= 0:
        return ms / 1000
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds if seconds >= 0 else None
    try:
        when = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now_wall is None else now_wall))


# -- the retry policy ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5  #: attempts in all, the first included
    base: float = 0.5  #: backoff ceiling for the first retry; doubles each time
    cap: float = 8.0  #: largest backoff ceiling
    max_retry_after: float = 120.0  #: a longer Retry-After is cut to this


class Random(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def retryable(status: int | None) -> bool:
    """True for what is worth another attempt: no response (timeout, connection), 408/409/429, 5xx."""
    return status is None or status in RETRY_STATUSES or status >= 500


def decide(
    policy: RetryPolicy,
    attempt: int,
    status: int | None,
    rng: Random,
    *,
    retry_after_s: float | None = None,
    should_retry: bool | None = None,
) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None to stop and report attempt `attempt`.

    `status` None means no response (timeout, connection error). `should_retry` is the provider's
    `x-should-retry` header when present: it overrides the status rule (never for a 2xx/3xx)."""
    if attempt >= policy.max_attempts or (status is not None and status < 400):
        return None
    if not (should_retry if should_retry is not None else retryable(status)):
        return None
    if retry_after_s is not None and retry_after_s >= 0:
        return min(retry_after_s, policy.max_retry_after)
    return rng.uniform(0.0, min(policy.cap, policy.base * 2 ** (attempt - 1)))


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    value = (headers.get("x-should-retry") or "").strip().lower()
    return True if value == "true" else False if value == "false" else None
