"""`JobEstimate`: a job's stored estimate, typed, read in one place.

`prepare` stores the estimate in the ledger as JSON (`estimate/api.Estimate.to_json()`, plus the send plan,
the mode router's choice and the manifest's totals) and hands out this frozen value: the figures the budget
check, the mode router, the report and the CLI's confirmation decide on, each with its fallbacks spelled once
(a plan-less estimate has no `plan`; an older one no `final_cost_usd`), and `data`, the stored JSON itself
(read-only) for `status` and anything that prints the whole. Those fallbacks were `est.get("totals") or {}`
chains in the CLI, the router, the budget check and the report.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coldbatch.core.frozen import frozen


def _first(m: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The value of the first of `keys` that `m` has, even when it is None (a present None means unknown)."""
    for k in keys:
        if k in m:
            return m[k]
    return default


@dataclass(frozen=True, slots=True)
class JobEstimate:
    requests: int  #: every request of the job (every row), before dedup and cache
    cost_to_send_usd: float | None  #: at batch prices, of what will actually be sent (after dedup and cache)
    batch_cost_usd: float | None  #: every request at batch prices
    sync_cost_usd: float | None  #: every row sent one by one at sync prices: the baseline of the saving
    final_cost_usd: float | None  #: after dedup and cache, at batch prices, as the estimate printed it
    saving_pct: float | None
    input_tokens_to_send: int | None
    distinct_requests: int | None  #: from the send plan (None: the job was not deduplicated)
    cache_hits: int | None
    planned_to_send: int | None  #: the send plan's requests to send (None: no plan)
    requests_to_send: int  #: what the router counts: the plan's figure, else the totals'
    route: Mapping[str, Any] | None  #: `--mode auto`'s choice and why (sync_mode.route)
    warnings: tuple[str, ...]
    data: Mapping[str, Any]  #: the estimate as stored (read-only JSON)

    @classmethod
    def of(cls, est: Mapping[str, Any] | None) -> JobEstimate:
        """The one reading of a stored estimate (None, or {}: a job not estimated yet, all unknown)."""
        est = frozen(dict(est or {}))
        totals: Mapping[str, Any] = est.get("totals") or {}
        plan: Mapping[str, Any] = est.get("plan") or {}
        return cls(
            requests=int(totals.get("requests") or 0),
            cost_to_send_usd=_first(totals, "final_cost_usd", "batch_cost_usd"),
            batch_cost_usd=totals.get("batch_cost_usd"),
            sync_cost_usd=totals.get("sync_cost_usd"),
            final_cost_usd=totals.get("final_cost_usd"),
            saving_pct=totals.get("saving_pct"),
            input_tokens_to_send=_first(totals, "input_tokens_to_send", "input_tokens"),
            distinct_requests=plan.get("distinct_requests"),
            cache_hits=plan.get("cache_hits"),
            planned_to_send=plan.get("requests_to_send"),
            requests_to_send=int(
                _first(plan, "requests_to_send", default=_first(totals, "requests_to_send", "requests", default=0)) or 0
            ),
            route=est.get("route"),
            warnings=tuple(est.get("warnings") or ()),
            data=est,
        )

    def routed(self, choice: Mapping[str, Any]) -> JobEstimate:
        """This estimate with `--mode auto`'s choice in it (stored, so a resume and the report see it)."""
        return JobEstimate.of({**self.data, "route": choice})

    def to_json(self) -> dict[str, Any]:
        """The estimate as the ledger stores it (a plain copy of `data`)."""
        return copy.deepcopy(dict(self.data))

    @property
    def approximate(self) -> bool:
        """Whether its token counts are approximate (a stand-in or a 4-bytes-a-token tokenizer)."""
        return any("approximate" in w for w in self.warnings)
