"""Issue 16 in the small: label jobs default to temperature 0 (and --help says so), costs of a local model
are $0 with no saving, its token counts are labelled approximate, exit codes follow the documented rule,
and the progress display ends on its own line before the summary."""

from __future__ import annotations

import io
import re
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from coldbatch.builder.spec import RequestSpec
from coldbatch.cli import exitcodes, main
from coldbatch.cli.progress import ProgressDisplay
from coldbatch.cli.report import print_report, show_estimate
from coldbatch.estimate.api import estimate
from coldbatch.runner.estimate_view import JobEstimate


def test_label_and_schema_jobs_are_deterministic_unless_told_otherwise() -> None:
    assert RequestSpec(model="m", prompt="{t}", labels=("a", "b")).extra_body()["temperature"] == 0
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    assert RequestSpec(model="m", prompt="{t}", schema=schema).extra_body()["temperature"] == 0
    assert RequestSpec(model="m", prompt="{t}", labels=("a",), temperature=0.7).extra_body()["temperature"] == 0.7
    assert "temperature" not in RequestSpec(model="m", prompt="{t}").extra_body()
    help_text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert "default: 0 with --labels or --schema" in help_text


def test_a_local_models_tokens_are_labelled_approximate(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text\nThe food was great.\n", encoding="utf-8")
    spec = RequestSpec(model="SmolLM2-135M-Instruct", prompt="Review: {text}", max_tokens=5)
    warnings = estimate([data], spec=spec).to_json()["warnings"]
    assert any("approximate" in w and "SmolLM2-135M-Instruct" in w for w in warnings), warnings
    openai_spec = RequestSpec(model="gpt-4o-mini", prompt="Review: {text}", max_tokens=5)
    assert not any("approximate" in w for w in estimate([data], spec=openai_spec).to_json()["warnings"])


REPORT = {
    "job": "j",
    "rows": 10,
    "output": "o.csv",
    "succeeded": 10,
    "failed": 0,
    "failed_by_code": {},
    "rejected_rows": 0,
    "retried_rows": 0,
    "rounds": 1,
    "prompt_tokens": 100,
    "cached_tokens": 0,
    "completion_tokens": 300,
    "mode": "sync",
    "cost_usd": 0.0001,
    "cost_batch_usd": 0.00005,
    "cost_sync_usd": 0.0001,
    "cost_sync_all_rows_usd": 0.00006,
    "saving_pct": -55.49,
    "estimated_batch_usd": 0.00003,
    "seconds": 1.0,
}


def test_a_local_model_costs_nothing_and_no_saving_is_printed(capsys: object) -> None:
    runner = CliRunner()
    with runner.isolation() as (out, err, *_):
        print_report(REPORT, local=True)
        show_estimate(JobEstimate.of({"totals": {"requests": 10, "saving_pct": -1.0}, "warnings": []}), local=True)
    text = out.getvalue().decode() + err.getvalue().decode()
    assert "$0 (the embedded server runs the model on this machine" in text
    assert "saving" not in text.replace("no saving to compute", "")
    with runner.isolation() as (out, *_):
        print_report(REPORT, local=False)
    assert "saving -55.49%" in out.getvalue().decode()


def test_exit_codes() -> None:
    ok = {**REPORT}
    some = {**REPORT, "succeeded": 9}
    none = {**REPORT, "succeeded": 0}
    assert exitcodes.exit_code(ok) == 0
    assert exitcodes.exit_code(some) == exitcodes.SOME_UNANSWERED == 4
    assert exitcodes.exit_code(none) == exitcodes.NONE_ANSWERED == 5
    assert exitcodes.exit_code(some, (1, False)) == 0 and exitcodes.exit_code(some, (10, True)) == 0
    assert exitcodes.exit_code(some, (5, True)) == 4 and exitcodes.exit_code(none, (100, True)) == 5
    assert exitcodes.Threshold().convert("1.5%", None, None) == (1.5, True)


def test_the_live_display_ends_before_the_summary() -> None:
    buf = io.StringIO()
    display = ProgressDisplay(Console(file=buf, force_terminal=True, width=120))
    for n in (0, 5, 10):
        display("progress", {"succeeded": n, "failed": 0, "remote_done": 0, "requests": 10})
    display.close()
    buf.write("10 rows → out.csv")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # colours and cursor moves
    assert "10/10" in text
    assert text.endswith("\n10 rows → out.csv"), repr(text[-200:])  # not on the progress line


def test_the_capability_rule() -> None:
    import pytest

    from coldbatch.errors import UsageError
    from coldbatch.runner.capability import Served, check

    chat_only = Served(models=("SmolLM2-135M-Instruct",), endpoints=("/v1/chat/completions",), engine="llama-cpp")
    with pytest.raises(UsageError, match=r"does not serve /v1/embeddings \(it serves /v1/chat/completions\)"):
        check(chat_only, model="SmolLM2-135M-Instruct", endpoint="/v1/embeddings", target="t")
    with pytest.raises(UsageError, match="it serves: SmolLM2-135M-Instruct"):
        check(chat_only, model="gpt-4o-mini", endpoint="/v1/chat/completions", target="t")
    assert check(chat_only, model="SmolLM2-135M-Instruct", endpoint="/v1/chat/completions", target="t") is None
    assert check(Served(models=("x",), any_model=True), model="y", endpoint="/v1/chat/completions", target="t") is None
    assert "not checked" in str(check(Served(models=None), model="y", endpoint="/v1/embeddings", target="t"))
