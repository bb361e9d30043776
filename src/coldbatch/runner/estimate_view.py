"""`EstimateView`: the figures of a job's stored estimate that the runner decides on, typed, read in one place.

The estimate itself stays the JSON dict `prepare` stores in the ledger (the CLI shows it, `status` prints
it); the runner's budget check, its mode router and its report read a handful of its figures, each with its
own fallbacks (a plan-less estimate has no `plan`; an older one no `final_cost_usd`). Those fallbacks were
`est.get("totals") or {}` chains in three places; they are spelled once here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _first(m: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The value of the first of `keys` that `m` has, even when it is None (a present None means unknown)."""
    for k in keys:
        if k in m:
            return m[k]
    return default


@dataclass(frozen=True)
class EstimateView:
    cost_to_send_usd: float | None  #: at batch prices, of what will actually be sent (after dedup and cache)
    batch_cost_usd: float | None  #: every request at batch prices
    sync_cost_usd: float | None  #: every row sent one by one at sync prices: the baseline of the saving
    input_tokens_to_send: int | None
    distinct_requests: int | None  #: from the send plan (None: the job was not deduplicated)
    cache_hits: int | None
    planned_to_send: int | None  #: the send plan's requests to send (None: no plan)
    requests_to_send: int  #: what the router counts: the plan's figure, else the totals'
    route: Mapping[str, Any] | None  #: `--mode auto`'s choice and why (sync_mode.route)

    @classmethod
    def of(cls, est: Mapping[str, Any] | None) -> EstimateView:
        est = est or {}
        totals: Mapping[str, Any] = est.get("totals") or {}
        plan: Mapping[str, Any] = est.get("plan") or {}
        return cls(
            cost_to_send_usd=_first(totals, "final_cost_usd", "batch_cost_usd"),
            batch_cost_usd=totals.get("batch_cost_usd"),
            sync_cost_usd=totals.get("sync_cost_usd"),
            input_tokens_to_send=_first(totals, "input_tokens_to_send", "input_tokens"),
            distinct_requests=plan.get("distinct_requests"),
            cache_hits=plan.get("cache_hits"),
            planned_to_send=plan.get("requests_to_send"),
            requests_to_send=int(
                _first(plan, "requests_to_send", default=_first(totals, "requests_to_send", "requests", default=0)) or 0
            ),
            route=est.get("route"),
        )
