"""The runner's mode is chosen once, from the job's options; the estimate's figures are read with the
fallbacks older and plan-less estimates need (runner/orchestrator.choose_mode, runner/estimate_view)."""

from __future__ import annotations

from typing import Any

import pytest

from coldbatch.builder.spec import RequestSpec
from coldbatch.errors import UsageError
from coldbatch.runner.batch_mode import BatchMode
from coldbatch.runner.estimate_view import JobEstimate
from coldbatch.runner.options import RunOptions
from coldbatch.runner.orchestrator import choose_mode
from coldbatch.runner.sync_mode import SyncMode


def _opts(**kw: Any) -> RunOptions:
    return RunOptions(spec=RequestSpec(model="m", prompt="{x}").describe(), **kw)


def test_the_mode_follows_the_options_and_only_a_deadline_arms_the_rescue() -> None:
    opened: list[RunOptions] = []

    def factory(o: RunOptions) -> Any:
        opened.append(o)
        return object()

    assert isinstance(choose_mode(_opts(mode="sync"), factory), SyncMode)
    batch = choose_mode(_opts(mode="batch"), factory)
    assert isinstance(batch, BatchMode) and batch.rescue_client is None
    unresolved = choose_mode(_opts(mode="auto"), factory)  # auto is resolved before a run; else it is batch
    assert isinstance(unresolved, BatchMode)
    late = choose_mode(_opts(mode="batch", deadline=1e10), factory)
    assert isinstance(late, BatchMode) and late.rescue_client is not None
    assert opened == [], "no client is opened until a mode needs one"
    late.rescue_client()
    assert [o.deadline for o in opened] == [1e10], "the rescue's client is made for the job's options"
    with pytest.raises(UsageError, match="sync client"):
        choose_mode(_opts(mode="sync"), None)


def test_the_estimate_view_keeps_a_known_unknown_apart_from_a_missing_figure() -> None:
    old = JobEstimate.of({"totals": {"batch_cost_usd": 2.0, "input_tokens": 10, "requests": 7}})
    assert (old.cost_to_send_usd, old.input_tokens_to_send, old.requests_to_send) == (2.0, 10, 7)
    assert old.planned_to_send is None and old.route is None
    unknown = JobEstimate.of({"totals": {"final_cost_usd": None, "batch_cost_usd": 2.0}})
    assert unknown.cost_to_send_usd is None, "a price the estimate could not know is not the full batch's"
    planned = JobEstimate.of({"totals": {"requests": 9}, "plan": {"requests_to_send": 3, "cache_hits": 6}})
    assert (planned.requests_to_send, planned.planned_to_send, planned.cache_hits) == (3, 3, 6)
    assert JobEstimate.of(None).requests_to_send == 0
