"""Check a request body against its endpoint's request schema: roles, field types, ranges, required fields.

The schemas are JSON Schema documents generated from the official SDKs' typed params
(`scripts/gen_body_schemas.py`: pydantic's `TypeAdapter(...).json_schema()` over openai's and anthropic's
`*CreateParams` TypedDicts, plus the numeric ranges their docstrings state) and committed under
`protocol/schemas/`, so neither SDK is needed at run time. A general JSON Schema validator
interprets the schema at every line, so each schema is compiled once instead, twice over: into a
pydantic-core validator (`schema_core.py`, Rust) whose yes/no answers every valid body, and into Python
checks that report what is wrong with a path and OpenAI's codes (`schema_checks.py`), run only on a body
the validator refused. In both, a union of objects is dispatched on its constant member (`role`, `type`).

Unknown fields are not errors: the SDKs send them through `extra_body`, and OpenAI-compatible servers
(and the echo fixture's `echo_fail`) take extensions. Errors are `(param, code, message)` with OpenAI's
codes and a JSON path such as `body.messages[1].role`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from importlib import resources
from typing import Any, Final

import orjson

from coldbatch.core.schema_checks import MAX_PROBLEMS, Check, Problem, _Compiler
from coldbatch.core.schema_core import validator
from coldbatch.protocol import limits as L

__all__ = ["MAX_PROBLEMS", "SCHEMA_FILES", "Problem", "check_body"]

SCHEMA_FILES: Final = {
    L.CHAT: "chat_completions.json",
    L.EMBEDDINGS: "embeddings.json",
    L.COMPLETIONS: "completions.json",
    L.RESPONSES: "responses.json",
    L.MESSAGES: "messages.json",
}


def check_body(endpoint: str, body: dict[str, Any], path: str = "body") -> list[Problem]:
    """Everything wrong with `body` for `endpoint` (at most MAX_PROBLEMS); [] for an endpoint without schema.

    A valid body (nearly every one) is answered by the fast predicate alone; only an invalid one is walked
    again by the checks that build paths and messages."""
    checks = _checker(endpoint)
    if checks is None or checks[0](body):
        return []
    problems: list[Problem] = []
    checks[1](body, path, problems)
    return problems[:MAX_PROBLEMS]


@cache
def _schema(endpoint: str) -> dict[str, Any] | None:
    name = SCHEMA_FILES.get(endpoint)
    if name is None:
        return None
    return orjson.loads(resources.files("coldbatch.protocol.schemas").joinpath(name).read_bytes())  # type: ignore[no-any-return]


@cache
def _checker(endpoint: str) -> tuple[Callable[[Any], bool], Check] | None:
    schema = _schema(endpoint)
    if schema is None:
        return None
    fast = validator(schema)
    return partial(fast.isinstance_python, strict=True), _Compiler(schema).compile(schema)
