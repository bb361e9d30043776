"""The providers `--provider` names: which one a job talks to, its batch limits, and how to build its adapter.

Why one table: `prepare` shards within the chosen provider's limits, `validate` checks them, `run` builds the
adapter and refuses what the provider cannot answer (embeddings on Anthropic, sync mode where coldbatch has
no synchronous client for the provider) before anything is sent. When `--provider` is not given it is inferred
from the base URL's host, else from the model's family (claude-* → anthropic, gemini-* → gemini), else OpenAI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from coldbatch.errors import UsageError
from coldbatch.protocol import limits as L
from coldbatch.providers import translate as T

KINDS = ("openai", "azure", "anthropic", "gemini")

#: per batch: OpenAI 50,000 requests / 200 MB; Azure OpenAI 100,000 / 200 MB; Anthropic 100,000 / 256 MB sent
#: inline (our files are cut at 240 MB of OpenAI-shaped lines: translation changes each line's size by a few
#: bytes); Gemini's File API takes files up to 2 GB (we cut at 1 GB) and documents no request cap (we use 100,000)
LIMITS = {
    "openai": L.Limits(),
    "azure": L.Limits(max_requests=100_000),
    "anthropic": L.Limits(max_requests=100_000, max_bytes=240 * 1000 * 1000),
    "gemini": L.Limits(max_requests=100_000, max_bytes=1000 * 1000 * 1000),
}
#: kinds whose requests are OpenAI batch lines as they are (the others translate each line)
OPENAI_WIRE = frozenset({"openai", "azure"})
_HOSTS = (
    ("anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("openai.azure.com", "azure"),
    ("cognitiveservices.azure.com", "azure"),
    ("api.openai.com", "openai"),
)
_MODELS = (("claude", "anthropic"), ("gemini", "gemini"))
_KEY_ENV = {
    "openai": ("OPENAI_API_KEY",),
    "azure": ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY"),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}


def infer(provider: str | None, base_url: str | None, model: str | None) -> str:
    """`--provider`, else the base URL's known host, else the model's family, else openai."""
    if provider:
        if provider not in KINDS:
            raise UsageError(f"--provider must be one of {', '.join(KINDS)}; got {provider!r}")
        return provider
    host = (urlparse(base_url).hostname or "") if base_url else ""
    for suffix, kind in _HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return kind
    name = (model or "").lower().rsplit("/", 1)[-1]
    for prefix, kind in _MODELS:
        if name.startswith(prefix):
            return kind
    return "openai"


def limits_for(kind: str, given: L.Limits) -> L.Limits:
    """The user's limits, each capped at the provider's (a larger --max-requests than it accepts is refused)."""
    cap = LIMITS[kind]
    if given.max_requests > cap.max_requests or given.max_bytes > cap.max_bytes:
        raise UsageError(
            f"--provider {kind} takes at most {cap.max_requests:,} requests and {cap.max_bytes:,} bytes "
            f"per batch; got --max-requests {given.max_requests:,} --max-bytes {given.max_bytes:,}"
        )
    return given


def default_limits(kind: str, given: L.Limits, *, requests_given: bool, bytes_given: bool) -> L.Limits:
    """The provider's own limits where the user left the option at its (OpenAI) default."""
    cap = LIMITS[kind]
    return limits_for(
        kind,
        L.Limits(
            max_requests=given.max_requests if requests_given else cap.max_requests,
            max_bytes=given.max_bytes if bytes_given else cap.max_bytes,
            max_line_bytes=given.max_line_bytes,
        ),
    )


def check_spec(kind: str, endpoint: str, sample_body: dict[str, Any], mode: str) -> None:
    """Refuse, before anything is sent, a job this provider cannot answer as coldbatch speaks to it."""
    if kind in OPENAI_WIRE:
        return
    if endpoint != L.CHAT:
        raise UsageError(
            f"--provider {kind}: only chat requests (--endpoint {L.CHAT}) are translated; "
            f"use an OpenAI-compatible provider for {endpoint}"
        )
    if mode == "sync":
        raise UsageError(
            f"--provider {kind}: --mode sync (and --deadline) need a synchronous client, which "
            "coldbatch has only for OpenAI-compatible APIs; use --mode batch"
        )
    (T.to_anthropic if kind == "anthropic" else T.to_gemini)(sample_body)


def api_key(kind: str, given: str | None) -> str | None:
    """--api-key, else the provider's usual environment variable. `--api-key` falls back on OPENAI_API_KEY, which
    must never be sent to Anthropic or Google: for them their own variable wins over a value that came from it."""
    own = next((os.environ[n] for n in _KEY_ENV[kind] if n != "OPENAI_API_KEY" and os.environ.get(n)), None)
    if kind not in OPENAI_WIRE and given is not None and given == os.environ.get("OPENAI_API_KEY"):
        return own
    return given or own or (os.environ.get("OPENAI_API_KEY") if kind in OPENAI_WIRE else None)


def make(kind: str, *, base_url: str | None, key: str | None, state_dir: Path) -> Any:
    """The adapter for `kind` (imported here, so a missing extra fails only the provider that needs it)."""
    if kind == "anthropic":
        from coldbatch.providers.anthropic_batches import AnthropicProvider

        return AnthropicProvider(base_url=base_url, api_key=key, state_dir=state_dir / "anthropic")
    if kind == "gemini":
        from coldbatch.providers.gemini_batches import GeminiProvider

        return GeminiProvider(base_url=base_url, api_key=key)
    from coldbatch.providers.openai_compat import OpenAIProvider

    if kind == "azure":
        return OpenAIProvider(base_url=base_url, api_key=key, azure=True)
    return OpenAIProvider(base_url=base_url, api_key=key)
