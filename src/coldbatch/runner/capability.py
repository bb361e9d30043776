"""What the target serves, checked before a job prepares or sends anything (issue 16, items 2 and 4).

Why: a model name the target does not serve, or an endpoint its engine has not got, used to fail row by
row after the job had started (`model_not_found` on every row in batch mode while sync mode accepted the
name; `http_404` on every embeddings row), with exit code 0. One rule now holds for batch and sync mode:
the model must be one the target lists at `GET /v1/models`, and the endpoint one it serves, or the job is
refused with a message that names what the target does serve.

What is known depends on the target. A coldbatch server adds a `coldbatch` object to its model list
(engine, endpoints, whether any model name is accepted); OpenAI lists models only (every listed model is
taken as usable; the Batch API's own list is not published); a target without `GET /v1/models` (some
proxies, Azure deployments) cannot be checked, and the job goes ahead as before, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai

from coldbatch.errors import UsageError


@dataclass(frozen=True, slots=True)
class Served:
    """What one target serves; None = not known (the check then lets it through)."""

    models: tuple[str, ...] | None
    endpoints: tuple[str, ...] | None = None
    engine: str | None = None
    any_model: bool = False


async def served(client: openai.AsyncOpenAI) -> Served:
    """Ask the target (`GET /v1/models`); an error of any kind means 'not known', never a failure."""
    try:
        body: Any = await client.with_options(max_retries=1).get("/models", cast_to=object)
    except (openai.APIError, ValueError):
        return Served(models=None)
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return Served(models=None)
    models = tuple(sorted(str(m.get("id")) for m in body["data"] if isinstance(m, dict) and m.get("id")))
    ext: dict[str, Any] = body["coldbatch"] if isinstance(body.get("coldbatch"), dict) else {}
    endpoints = ext.get("endpoints")
    return Served(
        models=models or None,
        endpoints=tuple(endpoints) if isinstance(endpoints, list) else None,
        engine=ext.get("engine"),
        any_model=bool(ext.get("any_model")),
    )


def check(s: Served, *, model: str, endpoint: str, target: str) -> str | None:
    """Raise UsageError when `target` cannot serve `model` at `endpoint`; returns a note when it could not be
    told (nothing listed), else None."""
    what = f"the engine {s.engine!r} at {target}" if s.engine else target
    if s.endpoints is not None and endpoint not in s.endpoints:
        raise UsageError(
            f"{what} does not serve {endpoint} (it serves {', '.join(s.endpoints)}); nothing was "
            "sent. Use an endpoint it serves, or another --base-url / --engine."
        )
    if s.models is None:
        return f"{target} does not list its models (GET /v1/models); the model name {model!r} is not checked"
    if not s.any_model and model not in s.models:
        shown = ", ".join(s.models[:20]) + (f", ... ({len(s.models)} in all)" if len(s.models) > 20 else "")
        raise UsageError(
            f"--model {model!r}: {what} does not serve it, in batch or sync mode alike; it serves: "
            f"{shown}. Nothing was sent."
        )
    return None


def listed(base_url: str, api_key: str | None) -> str:
    """For an error message: the models `base_url` lists, or why they could not be listed."""
    try:
        with openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=10) as c:
            body: Any = c.get("/models", cast_to=object)
        names = sorted(str(m.get("id")) for m in body["data"] if isinstance(m, dict))
    except (openai.APIError, ValueError, KeyError, TypeError) as exc:
        return f"its model list (GET /models) could not be read: {type(exc).__name__}"
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return f"it serves: {shown or '(none listed)'}"
