"""core/bodies.py: the request schemas generated from the SDKs, compiled twice (fast predicates, reporting
checks). The two must agree on every body: a property test mutates valid bodies of each endpoint at random
paths and compares them; the committed schema files must be what the generator makes from the installed SDKs."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldbatch.core.bodies import _checker, check_body
from coldbatch.protocol import limits as L

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]}}}
VALID: dict[str, dict[str, Any]] = {
    L.CHAT: {
        "model": "gpt-4o-mini",
        "max_tokens": 10,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
        "messages": [
            {"role": "system", "content": "Label."},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "data:,"}}],
            },
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": SCHEMA}},
        "stop": ["\n"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    },
    L.EMBEDDINGS: {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8},
    L.COMPLETIONS: {"model": "gpt-3.5-turbo-instruct", "prompt": "Once", "max_tokens": 5, "logprobs": 2},
    L.RESPONSES: {
        "model": "gpt-4o-mini",
        "instructions": "Be brief.",
        "max_output_tokens": 20,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call_output", "call_id": "c", "output": "1"},
        ],
        "text": {"format": {"type": "json_schema", "name": "l", "schema": SCHEMA}},
    },
    L.MESSAGES: {
        "model": "claude-x",
        "max_tokens": 16,
        "system": [{"type": "text", "text": "Label."}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    },
}
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.floats(-3, 3)
    | st.text(max_size=5)
    | st.sampled_from(["user", "assistant", "system", "text", "json_schema", "function", "bot"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


@pytest.mark.parametrize("endpoint", list(VALID))
def test_the_valid_bodies_pass(endpoint: str) -> None:
    assert check_body(endpoint, VALID[endpoint]) == []


@settings(max_examples=300, deadline=None)
@given(endpoint=st.sampled_from(list(VALID)), pick=st.integers(0, 10_000), value=JSON, drop=st.booleans())
def test_fast_predicate_and_reporting_checks_agree(endpoint: str, pick: int, value: Any, drop: bool) -> None:
    body = copy.deepcopy(VALID[endpoint])
    where = paths(body)[1:]
    path = where[pick % len(where)]
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    fast, report = _checker(endpoint)  # type: ignore[misc]  # (pydantic-core yes/no, the reporting checks)
    problems: list[Any] = []
    report(body, "body", problems)
    assert fast(body) == (not problems), (path, value, problems)
    for param, code, message in problems:
        assert param.startswith("body") and code and param in message


def test_errors_name_field_and_code() -> None:
    bad = {**VALID[L.CHAT], "temperature": 2.5, "messages": [{"role": "bot", "content": "x"}]}
    assert {(p, c) for p, c, _ in check_body(L.CHAT, bad)} == {
        ("body.messages[0].role", "invalid_value"),
        ("body.temperature", "decimal_above_max_value"),
    }
    assert check_body(L.MESSAGES, {**VALID[L.MESSAGES], "messages": "hi"}, "params")[0][:2] == (
        "params.messages",
        "invalid_type",
    )


@pytest.mark.skipif(importlib.util.find_spec("anthropic") is None, reason="the generator needs the SDKs ([dev])")
def test_committed_schemas_are_what_the_installed_sdks_generate() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_body_schemas.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
