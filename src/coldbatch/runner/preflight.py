"""Checks a job passes before it prepares or sends anything (issue 16): OUTPUT's column names, and that the
target serves the job's model and endpoint. Each refusal says what to do.

Why in runner/ and not the CLI: `coldbatch run` and `coldbatch.run_job` refuse the same jobs by the same
rule, and the job API may not import the CLI (tests/unit/test_layering.py). What only the CLI needs (the
embedded server's default model, which depends on its engines) stays in cli/preflight.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coldbatch.core.unit_state import JobStatus
from coldbatch.errors import UsageError
from coldbatch.providers.openai_compat import OpenAIProvider
from coldbatch.runner import capability
from coldbatch.runner.output_spec import added_columns, check_columns, input_columns
from coldbatch.store.interfaces import LedgerStore

if TYPE_CHECKING:
    from coldbatch.builder.spec import RequestSpec
    from coldbatch.runner.options import RunOptions


def check_output_columns(
    input_path: Path, fmt: str | None, spec: RequestSpec, prefix: str, companion: list[Any] | None
) -> None:
    """OUTPUT's added columns must not clash with the input's: refused here, before anything is sent."""
    labels = tuple(companion[1]["labels"]) if companion else spec.labels
    added = added_columns(spec, labels, prefix, classified=bool(companion))
    check_columns(input_columns(input_path, fmt), added, str(input_path))


async def check_target(
    ledger: LedgerStore, provider: Any, opts: RunOptions, job_id: str, notice: Callable[[str], None]
) -> None:
    """Refuse, before anything is prepared or sent, a model or endpoint the target does not serve (one rule
    for batch and sync mode); the job is then failed with the reason, as a refused input is. A target that
    cannot be checked is said in a `note:` through `notice` (the CLI: a line on stderr)."""
    if not isinstance(provider, OpenAIProvider):  # Anthropic and Gemini list their models their own way
        return
    target = "the embedded server" if opts.provider == "embedded" else provider.name
    try:
        note = capability.check(
            await capability.served(provider.client),
            model=opts.spec["model"],
            endpoint=opts.spec["endpoint"],
            target=target,
        )
    except UsageError as exc:
        ledger.set_job(job_id, status=JobStatus.FAILED, report={"error": str(exc)})
        raise
    if note:
        notice(f"note: {note}")
