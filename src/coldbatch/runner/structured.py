"""Structured outputs: check each answer against the job's labels or JSON schema before it counts.

An answer that does not parse or does not match is retried (`invalid_output_retries` times, default 1)
and otherwise reported per row as `invalid_output`, with the raw text kept in `response`. Only answers
that pass are cached. Schema checks use the `jsonschema` library (Draft 2020-12).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

import orjson

from coldbatch.runner.ledger import Outcome


@lru_cache(maxsize=8)
def _validator(schema_json: str) -> Any:
    import jsonschema  # only a job with a schema checks answers: ~0.25 s and 11 MB that a plain job skips

    schema = orjson.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def _label_enum(schema: dict[str, Any]) -> tuple[str, frozenset[str]] | None:
    """(field, allowed values) when the schema is the one-field enum that --labels builds."""
    props = schema.get("properties") or {}
    if len(props) != 1 or schema.get("additionalProperties") is not False:
        return None
    name, prop = next(iter(props.items()))
    enum = prop.get("enum") if isinstance(prop, dict) else None
    if prop.get("type") != "string" or not isinstance(enum, list) or schema.get("required") != [name]:
        return None
    return name, frozenset(enum)


def label_field(schema: dict[str, Any] | None) -> tuple[str, frozenset[str]] | None:
    """(field, labels) of a --labels job's answers, whose `confidence` OUTPUT reports; None for other jobs."""
    return _label_enum(schema) if schema is not None else None


def problem(content: str | None, schema: dict[str, Any]) -> str | None:
    """Why `content` is not a valid answer, or None when it is."""
    if content is None:
        return "no answer text"
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return f"the answer is not JSON ({exc})"
    labels = _label_enum(schema)
    if labels is not None and isinstance(value, dict) and len(value) == 1 and value.get(labels[0]) in labels[1]:
        return None  # the common --labels case, checked without the (much slower) general validator
    from jsonschema.exceptions import best_match

    error = best_match(_validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()).iter_errors(value))
    return None if error is None else f"the answer does not match the schema: {error.message}"


def check(outcome: Outcome, schema: dict[str, Any] | None, *, attempt: int, retries: int) -> Outcome:
    """The outcome itself, or an `invalid_output` retry/failure that keeps the raw text."""
    if schema is None or outcome.state != "ok":
        return outcome
    why = problem(outcome.content, schema)
    if why is None:
        return outcome
    return replace(
        outcome, state="retry" if attempt <= retries else "failed", error_code="invalid_output", error_message=why
    )


def columns(content: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    """The answer's top-level properties as OUTPUT cells (non-scalars as JSON text)."""
    try:
        value = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        value = None
    out: dict[str, Any] = {}
    for name in schema.get("properties", {}):
        v = value.get(name) if isinstance(value, dict) else None
        out[name] = v if v is None or isinstance(v, str) else orjson.dumps(v).decode()
    return out
