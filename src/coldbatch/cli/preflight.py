"""The check `coldbatch run` makes on its own before it builds a job (issue 16): the model, a default one on
the embedded server. The checks the job API shares (OUTPUT's column names, what the target serves) are in
runner/preflight.py. Each refusal says what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coldbatch.engines.names import DEFAULT_EMBEDDING_MODEL, DEFAULT_GGUF, EMBEDDINGS, model_id
from coldbatch.errors import UsageError
from coldbatch.runner import capability


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
