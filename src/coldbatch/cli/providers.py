"""`--provider openai|azure|anthropic|gemini` for run, prepare, validate and estimate (see providers/kinds.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import openai
import orjson

from coldbatch.builder.spec import RequestSpec
from coldbatch.errors import LineError
from coldbatch.protocol import limits as L
from coldbatch.providers import kinds as K
from coldbatch.providers import translate as T
from coldbatch.providers.base import ProviderError
from coldbatch.validation import iter_lines


def _sdk_errors() -> tuple[type[BaseException], ...]:
    """Every provider SDK's API error that is installed: a failed call ends the run with `resume` advice."""
    found: list[type[BaseException]] = [openai.APIError, ProviderError]
    try:
        import anthropic

        found.append(anthropic.APIError)
    except ImportError:
        pass
    try:
        from google.genai import errors as genai_errors

        found.append(genai_errors.APIError)
    except ImportError:
        pass
    return tuple(found)


API_ERRORS = _sdk_errors()


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
