"""Which provider dialect a job speaks, on what terms, and which SDK errors count as the provider failing.

Why a module of its own, below the CLI: `coldbatch run` and `coldbatch.run_job` resolve a job's provider
(kind, batch limits, mode) by one rule, and the job API may not import the CLI (tests/unit/test_layering.py).
The `--provider` flag itself stays in cli/providers.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from coldbatch.errors import LineError
from coldbatch.jsonl import iter_lines
from coldbatch.protocol import limits as L
from coldbatch.providers import kinds as K
from coldbatch.providers import translate as T
from coldbatch.providers.base import ProviderError

if TYPE_CHECKING:
    from coldbatch.builder.spec import RequestSpec


def api_errors() -> tuple[type[BaseException], ...]:
    """Every provider SDK's API error class: a failed call ends the run with `resume` advice.

    Only an SDK that is imported can have raised, so the classes come from `sys.modules` and no SDK is
    imported here: importing openai, anthropic and google-genai up front cost 4 s of every `coldbatch
    prepare` (issue 11: prepare >= 10x the naive script, a light client). Call it in the `except` clause
    itself (`except api_errors() as exc`), which Python evaluates when an exception is matched: after the
    SDK ran."""
    found: list[type[BaseException]] = [ProviderError]
    for module in ("openai", "anthropic", "google.genai.errors"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            found.append(loaded.APIError)
    return tuple(found)


def sample_body(spec: RequestSpec) -> dict[str, Any]:
    """The body of one request of this spec (content "x"), to check it translates before anything is built."""
    prefix, middle, suffix = spec.frame()
    return dict(orjson.loads(prefix + '"x"' + middle + '"x"' + suffix)["body"])


def resolve(
    provider: str | None,
    base_url: str | None,
    spec: RequestSpec,
    given: L.Limits,
    mode: str = "batch",
    *,
    deadline: bool = False,
) -> tuple[str, L.Limits, str]:
    """(kind, limits, mode) of a job: the provider's limits where the user kept OpenAI's defaults, and batch
    mode for providers without a synchronous client here (`--mode auto`; `--mode sync` is refused)."""
    kind = K.infer(provider, base_url, spec.model)
    limits = K.LIMITS[kind]
    limits = K.limits_for(
        kind,
        L.Limits(
            max_requests=limits.max_requests if given.max_requests == L.MAX_REQUESTS else given.max_requests,
            max_bytes=limits.max_bytes if given.max_bytes == L.MAX_FILE_BYTES else given.max_bytes,
            max_line_bytes=given.max_line_bytes,
        ),
    )
    if kind not in K.OPENAI_WIRE and mode == "auto":
        mode = "batch"
    K.check_spec(kind, spec.endpoint, sample_body(spec), "sync" if deadline else mode)
    return kind, limits, mode


def translation_errors(path: Path, kind: str, max_errors: int) -> list[LineError]:
    """`validate --provider anthropic|gemini`: each line whose body the provider's API cannot express."""
    if kind in K.OPENAI_WIRE:
        return []
    convert = T.to_anthropic if kind == "anthropic" else T.to_gemini
    out: list[LineError] = []
    for n, line in enumerate(iter_lines(path), 1):
        if not line.strip():
            continue
        try:
            body = orjson.loads(line).get("body")
            convert(body if isinstance(body, dict) else {})
        except (T.Untranslatable, orjson.JSONDecodeError, AttributeError, KeyError) as exc:
            out.append(LineError(n, f"not_{kind}", str(exc), "body", str(path)))
            if len(out) >= max_errors:
                break
    return out
