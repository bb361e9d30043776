"""What the llama-cpp engine accepts and what it answers: a chat body checked into `Params`, and the
`chat.completion` built around the decoder's text.

Its own module because it is the wire half of the engine, pure Python with no llama.cpp state (it runs on
the event loop's side): which OpenAI options the engine honours and the 400 that each bad one gets. A
`response_format` JSON schema becomes a GBNF grammar here (`llama_cpp.llama_grammar.json_schema_to_gbnf`):
llama-cpp-python's in-process `create_chat_completion` silently ignores an OpenAI-style `json_schema`
format, and without a grammar a 135 M model rarely answers with a valid label. With it, a `--labels`
answer is always one of the labels.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import orjson

from coldbatch.engines.base import Result, error_result

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
_UNSUPPORTED: Final = (("stream", True), ("tools", None), ("functions", None))
MAX_TOP_LOGPROBS: Final = 20  #: OpenAI's limit for `top_logprobs`


@dataclass(frozen=True, slots=True)
class Params:
    """One validated chat request, ready for the worker."""

    messages: list[dict[str, str]]
    max_new: int | None  #: None: up to the context size
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    grammar: str | None  #: GBNF text, root rule `root`
    logprobs: bool = False  #: report each answer token's log-probability (OpenAI `logprobs`)
    top_logprobs: int = 0  #: and this many most likely alternatives per position (0-20)


def parse(body: dict[str, Any], grammars: dict[bytes, str]) -> Params | Result:
    """Validate `body`; a Result is the 400 to answer instead."""
    messages = _parse_messages(body.get("messages"))
    if isinstance(messages, Result):
        return messages
    for key, bad in _UNSUPPORTED:
        if body.get(key) is not None and (bad is None or body.get(key) == bad):
            return error_result(400, f"{key!r} is not supported by the llama-cpp engine", param=key)
    if body.get("n") not in (None, 1):
        return error_result(400, "only n=1 is supported by the llama-cpp engine", param="n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_new = body.get(key)
    if max_new is not None and (not _is_int(max_new) or max_new < 1):
        return error_result(400, f"{key} must be a positive integer", param=key)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    if isinstance(temperature, Result):
        return temperature
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if isinstance(top_p, Result):
        return top_p
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        return error_result(400, "seed must be an integer", param="seed")
    stop = _parse_stop(body.get("stop"))
    if isinstance(stop, Result):
        return stop
    grammar = _parse_format(body.get("response_format"), grammars)
    if isinstance(grammar, Result):
        return grammar
    logprobs = _parse_logprobs(body)
    if isinstance(logprobs, Result):
        return logprobs
    return Params(
        messages, max_new, temperature, top_p, None if seed is None else seed & 0xFFFFFFFF, stop, grammar, *logprobs
    )


def _parse_logprobs(body: dict[str, Any]) -> tuple[bool, int] | Result:
    """(logprobs, top_logprobs) as OpenAI takes them: a boolean, and 0-20 alternatives that need logprobs."""
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        return error_result(400, "logprobs must be a boolean", param="logprobs")
    if top is None:
        return bool(logprobs), 0
    if not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
        return error_result(
            400, f"top_logprobs must be an integer between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs"
        )
    if not logprobs:
        return error_result(400, "top_logprobs needs logprobs to be true", param="top_logprobs")
    return True, top


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float | Result:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        return error_result(400, f"{key} must be a number between {low:g} and {high:g}", param=key)
    return float(value)


def _parse_messages(messages: Any) -> list[dict[str, str]] | Result:
    if not isinstance(messages, list) or not messages:
        return error_result(400, "messages must be a non-empty array", param="messages")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            return error_result(400, f"messages[{i}].role must be one of {sorted(_ROLES)}", param="messages")
        content = _text(message.get("content"))
        if content is None:
            return error_result(
                400, f"messages[{i}].content must be a string or an array of text parts", param="messages"
            )
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _parse_stop(stop: Any) -> tuple[str, ...] | Result:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        return error_result(400, "stop must be a string or an array of up to 4 non-empty strings", param="stop")
    return tuple(stops)


def _parse_format(fmt: Any, grammars: dict[bytes, str]) -> str | Result | None:
    """response_format -> GBNF text (None: free text). `grammars` caches conversions by schema."""
    from llama_cpp import llama_grammar

    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return llama_grammar.JSON_GBNF
    schema = (
        fmt.get("json_schema", {}).get("schema")
        if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict)
        else None
    )
    if not isinstance(schema, dict):
        return error_result(
            400,
            "response_format must be {'type': 'text' | 'json_object'} or "
            "{'type': 'json_schema', 'json_schema': {'schema': {...}}}",
            param="response_format",
        )
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    if key not in grammars:
        try:
            grammars[key] = llama_grammar.json_schema_to_gbnf(key.decode())
        except Exception as exc:  # the converter raises bare Exceptions/KeyErrors on schemas it cannot do
            return error_result(400, f"cannot turn this JSON schema into a grammar: {exc}", param="response_format")
    return grammars[key]


def completion(
    text: str,
    finish: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: list[dict[str, Any]] | None = None,
) -> Result:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
            }
        ],
        "usage": usage,
    }
    return Result(200, body, dict(usage))
