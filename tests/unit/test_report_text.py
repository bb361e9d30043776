"""The job summary `coldbatch run` prints: a negative saving comes with its reason (issue 15, item 9)."""

from __future__ import annotations

from typing import Any

import pytest

from coldbatch.cli import report

REPORT: dict[str, Any] = {
    "rows": 100,
    "output": "out.csv",
    "succeeded": 100,
    "failed": 0,
    "failed_by_code": {},
    "rejected_rows": 0,
    "retried_rows": 0,
    "rounds": 1,
    "prompt_tokens": 2_000,
    "cached_tokens": 0,
    "completion_tokens": 1_500,
    "mode": "batch",
    "cost_usd": 0.00066,
    "cost_batch_usd": 0.00066,
    "cost_sync_usd": 0.00132,
    "cost_sync_all_rows_usd": 0.0005,
    "estimated_batch_usd": 0.00025,
    "seconds": 3.1,
}


def test_a_negative_saving_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    report.print_report({**REPORT, "saving_pct": -32.24})
    out = capsys.readouterr().out
    assert "saving -32.24%" in out
    assert "the saving is negative because" in out and "1,500 completion tokens" in out
    assert "answers were longer than estimated" in out


def test_a_positive_saving_needs_no_note(capsys: pytest.CaptureFixture[str]) -> None:
    report.print_report({**REPORT, "saving_pct": 50.0})
    assert "negative" not in capsys.readouterr().out
