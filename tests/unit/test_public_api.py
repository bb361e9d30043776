"""The public API: every name in `coldbatch.__all__` imports and is what it says (issue 11, item 6).

`estimate` is a function although a subpackage has the same name; `import coldbatch` stays light (the
heavy names are imported on first use), which the CLI's start time depends on.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import coldbatch

#: each public name and the kind a user relies on
KINDS = {
    "ColdbatchError": "exception",
    "InputError": "exception",
    "UsageError": "exception",
    "ValidationFailed": "exception",
    "LineError": "class",
    "Limits": "class",
    "PrepareResult": "class",
    "RequestSpec": "class",
    "Estimate": "class",
    "prepare": "function",
    "estimate": "function",
    "validate_file": "function",
    "JobReport": "class",
    "run_job": "function",
    "resume_job": "function",
    "cancel_job": "function",
    "__version__": "str",
}


def _kind(value: object) -> str:
    if inspect.isclass(value):
        return "exception" if issubclass(value, BaseException) else "class"
    if inspect.isfunction(value):
        return "function"
    return type(value).__name__


def test_all_is_exactly_what_imports() -> None:
    assert sorted(coldbatch.__all__) == sorted(KINDS)
    for name in coldbatch.__all__:
        ns: dict[str, object] = {}
        exec(f"from coldbatch import {name}", ns)  # the statement a user writes
        assert _kind(ns[name]) == KINDS[name], name
        assert getattr(coldbatch, name) is ns[name]


def test_estimate_stays_the_function_after_its_subpackage_is_imported() -> None:
    import coldbatch.estimate.api
    from coldbatch.estimate import prices

    assert inspect.isfunction(coldbatch.estimate)
    assert coldbatch.estimate is sys.modules["coldbatch.estimate.api"].estimate
    assert prices.load().source


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        coldbatch.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("coldbatch.no_such_name did not raise")


def test_the_readme_api_example_runs(tmp_path: Path) -> None:
    """prepare -> validate_file -> estimate, imported from `coldbatch` as the README shows."""
    from coldbatch import RequestSpec, estimate, prepare, validate_file

    src = tmp_path / "reviews.csv"
    src.write_text("text\ngreat value\nbroke in a day\n")
    result = prepare(
        src,
        tmp_path / "shards",
        RequestSpec(model="gpt-4o-mini", prompt="Review: {text}", labels=("negative", "neutral", "positive")),
    )
    report = validate_file(result.out / result.shards[0]["path"])
    assert report.ok and report.requests == 2
    assert estimate([result.out]).to_json()["totals"]["requests"] == 2


def test_import_does_not_load_the_data_stack() -> None:
    code = "import coldbatch, sys; print([m for m in ('polars', 'pyarrow', 'numpy', 'openai') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_prepare_validate_and_estimate_load_no_provider_sdk() -> None:
    """An SDK costs 0.5-2 s to import; these commands call no provider (issue 11: prepare >= 10x naive)."""
    code = (
        "import sys, coldbatch.cli.prepare, coldbatch.cli.validate, coldbatch.cli.estimate; "
        "print([m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
