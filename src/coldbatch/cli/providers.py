"""`--provider openai|azure|anthropic|gemini` for run, prepare, validate and estimate (see providers/kinds.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from coldbatch.builder.spec import RequestSpec
from coldbatch.errors import LineError
from coldbatch.protocol import limits as L
from coldbatch.providers import kinds as K
from coldbatch.providers import translate as T
from coldbatch.providers.base import ProviderError
from coldbatch.validation import iter_lines


def api_errors() -> tuple[type[BaseException], ...]:
    """Every provider SDK's API error class: a failed call ends the run with `resume` advice.

    Only an SDK that is imported can have raised, so the classes come from `sys.modules` and no SDK is
    imported here: importing openai, anthropic and google-genai up front cost 4 s of every `coldbatch
    prepare` (issue 11: prepare >= 10x the naive script, a light client)."""
    found: list[type[BaseException]] = [ProviderError]
    for module in ("openai", "anthropic", "google.genai.errors"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            found.append(loaded.APIError)
    return tuple(found)


def __getattr__(name: str) -> Any:
    if name == "API_ERRORS":  # `except PV.API_ERRORS` is evaluated when an exception is matched: after the SDK ran
        return api_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def provider_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--provider",
        type=click.Choice(K.KINDS),
        help="The Batch API's dialect (default: from the base URL's host, else the model's family "
        "— claude-* anthropic, gemini-* gemini — else openai). Sets the batch limits, translates "
        "the requests and parses the answers.",
    )(fn)


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


def make(kind: str, base_url: str | None, api_key: str | None, root: Path) -> Any:
    return K.make(kind, base_url=base_url, key=K.api_key(kind, api_key), state_dir=root / "providers")


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
