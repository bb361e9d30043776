"""Checks `coldbatch run` makes before it prepares or sends anything (issue 16): the model (a default one on
the embedded server), OUTPUT's column names, and what the target serves. Each refusal says what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coldbatch.builder.spec import RequestSpec
from coldbatch.engines.embedding import DEFAULT_EMBEDDING_MODEL, EMBEDDINGS
from coldbatch.engines.llamacpp import DEFAULT_GGUF, model_id
from coldbatch.errors import UsageError
from coldbatch.providers.openai_compat import OpenAIProvider
from coldbatch.runner import capability
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.orchestrator import RunOptions
from coldbatch.runner.output import added_columns, check_columns, input_columns


def default_model(opts: dict[str, Any], base_url: str | None, engine: str, api_key: str | None) -> dict[str, Any]:
    """The embedded default needs no --model: its llama-cpp engine serves one chat model and one embedding
    model (the echo fixture takes any name). A remote target needs one; the error lists what it serves."""
    if opts.get("model"):
        return opts
    if base_url:
        raise UsageError(f"--model is required with --base-url {base_url}; {capability.listed(base_url, api_key)}")
    if engine == "llama-cpp":
        model = DEFAULT_EMBEDDING_MODEL if opts.get("endpoint") == EMBEDDINGS else model_id(Path(DEFAULT_GGUF))
    else:
        model = engine
    return {**opts, "model": model}


def check_output_columns(
    input_path: Path, fmt: str | None, spec: RequestSpec, prefix: str, companion: list[Any] | None
) -> None:
    """OUTPUT's added columns must not clash with the input's: refused here, before anything is sent."""
    labels = tuple(companion[1]["labels"]) if companion else spec.labels
    added = added_columns(spec, labels, prefix, classified=bool(companion))
    check_columns(input_columns(input_path, fmt), added, str(input_path))


async def check_target(ledger: Ledger, provider: OpenAIProvider, opts: RunOptions, job_id: str) -> None:
    """Refuse, before anything is prepared or sent, a model or endpoint the target does not serve (one rule
    for batch and sync mode); the job is then failed with the reason, as a refused input is."""
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
        ledger.set_job(job_id, status="failed", report={"error": str(exc)})
        raise
    if note:
        click.echo(f"note: {note}", err=True)
