"""One job spec, every provider's request body: OpenAI chat-completions bodies to Anthropic and Gemini, and back.

Why translate at submit time: `prepare` always writes OpenAI-shaped request lines, so dedup keys, the answer
cache, `validate` and `estimate` see one format whatever the provider; the Anthropic and Gemini adapters turn
each line into their provider's body when they send it, and turn each answer back into a chat completion, so
`runner/outcomes.py` reads every provider's results into the same OUTPUT columns.

Structured outputs: the job's JSON schema (`--labels` is a one-field enum schema) becomes Anthropic's
`output_config.format` ({"type": "json_schema", "schema"}) and Gemini's `responseMimeType` +
`responseSchema` (its OpenAPI subset: upper-case types, no `additionalProperties`). A body field a provider
cannot express is refused by name (`Untranslatable`), never dropped silently; the exceptions are `logprobs`
and `top_logprobs`, which only feed OUTPUT's `confidence` and are dropped (that column is then empty), and
Anthropic's `temperature` 0 (a labels job's default): anthropic 2.16's Messages params have no sampling
parameters at all, so 0 is dropped and any other temperature or top_p is refused.
Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import orjson

from coldbatch.errors import UsageError

#: Anthropic requires max_tokens; a job without --max-tokens gets this (about 750 words)
DEFAULT_MAX_TOKENS = 1024
#: Anthropic's custom_id alphabet and length
ANTHROPIC_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: dropped without a word: they only feed OUTPUT's confidence column, which these providers cannot fill
_CONFIDENCE_ONLY = frozenset({"logprobs", "top_logprobs"})
#: Anthropic Messages fields a user may pass through --body-json as they are
_ANTHROPIC_NATIVE = frozenset(
    {
        "stop_sequences",
        "metadata",
        "thinking",
        "tools",
        "tool_choice",
        "service_tier",
        "output_config",
        "cache_control",
        "container",
        "inference_geo",
        "speed",
    }
)
#: Gemini GenerateContentRequest fields a user may pass through --body-json (dicts merge into ours)
_GEMINI_NATIVE = frozenset({"safetySettings", "generationConfig", "cachedContent"})
#: the chat-completions fields every translator turns into the provider's own
_TRANSLATED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "n", "response_format"}
)
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
}


class Untranslatable(UsageError):
    """A request body field has no equivalent in the provider's API."""


def wire_id(custom_id: str, prefix: str) -> str:
    """The custom_id sent to Anthropic: `prefix_` + the id when the result fits `^[A-Za-z0-9_-]{1,64}$`
    (dedup keys always do), else `prefix_h` + 40 hex digits of its SHA-256 (row ids with '~', '.', or too long)."""
    wid = f"{prefix}_{custom_id}"
    if ANTHROPIC_ID.match(wid):
        return wid
    return f"{prefix}_h{hashlib.sha256(custom_id.encode()).hexdigest()[:40]}"


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or a list of text parts (images and audio are not translated)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise Untranslatable(f"{where}: only text content parts can be translated; got {p!r:.80}")
            parts.append(p["text"])
        return "".join(parts)
    raise Untranslatable(f"{where}: content must be a string or a list of text parts")


def _split_messages(body: dict[str, Any]) -> tuple[str | None, list[tuple[str, str]]]:
    """(system text, [(role, text)]) from an OpenAI messages list; system/developer messages are joined."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(body.get("messages") or []):
        role = m.get("role")
        text = _text(m.get("content"), f"messages[{i}]")
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            turns.append((role, text))
        else:
            raise Untranslatable(f"messages[{i}]: role {role!r} cannot be translated (tool calls are not)")
    if not turns:
        raise Untranslatable("messages: no user message to send")
    return ("\n\n".join(system) if system else None), turns


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    rf = body.get("response_format")
    if rf is None or (isinstance(rf, dict) and rf.get("type") == "text"):
        return None
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
    raise Untranslatable(f"response_format {rf!r:.80} cannot be translated: only json_schema can")


def _stops(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def _passed_through(
    body: dict[str, Any], translated: frozenset[str], native: frozenset[str], provider: str
) -> Iterator[tuple[str, Any]]:
    """The request fields a translator left over, to pass on as they are: each must be one of the
    provider's own (`native`), or the request is refused naming the field, never sent with it silently
    dropped. One loop for every provider, so the rule cannot differ between them."""
    for key, value in body.items():
        if key in translated or key in _CONFIDENCE_ONLY:
            continue
        if key not in native:
            raise Untranslatable(f"request field {key!r} has no {provider} equivalent")
        yield key, value


def _check_n(body: dict[str, Any], provider: str) -> None:
    if body.get("n") not in (None, 1):
        raise Untranslatable(f"n={body['n']} cannot be translated: {provider} answers once per request")


def to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions body as Anthropic Messages API params (a Message Batches request's `params`)."""
    _check_n(body, "Anthropic")
    system, turns = _split_messages(body)
    params: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": int(body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS),
    }
    if system is not None:
        params["system"] = system
    params["messages"] = [{"role": r, "content": t} for r, t in turns]
    t = body.get("temperature")
    if t not in (None, 0, 0.0) or body.get("top_p") is not None:
        raise Untranslatable(
            f"temperature {t} / top_p {body.get('top_p')} cannot be translated: Anthropic's Messages "
            "API (anthropic 2.16's types) has no sampling parameters; leave them unset"
        )
    stops = _stops(body)
    if stops:
        params["stop_sequences"] = stops
    schema = _schema_of(body)
    if schema is not None:
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if body.get("user") is not None:
        params["metadata"] = {"user_id": str(body["user"])}
    for key, value in _passed_through(body, _TRANSLATED | {"user"}, _ANTHROPIC_NATIVE, "Anthropic"):
        params[key] = value
    return params


def from_anthropic(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Message as a chat.completion body (text blocks joined; a tool_use block's input as JSON)."""
    parts = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            parts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            parts.append(orjson.dumps(block.get("input")).decode())
    u = message.get("usage") or {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cached + int(u.get("cache_creation_input_tokens") or 0)
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(parts)},
                "finish_reason": _FINISH.get(str(message.get("stop_reason")), "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": int(u.get("output_tokens") or 0),
            "total_tokens": prompt + int(u.get("output_tokens") or 0),
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema in Gemini's responseSchema subset (OpenAPI 3.0 Schema): upper-case `type`, and only the
    keywords it knows (`additionalProperties`, `$schema`, `title` dropped: Gemini refuses them)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            out["type"] = value.upper() if isinstance(value, str) else value
        elif key == "properties":
            out["properties"] = {k: gemini_schema(v) for k, v in value.items()}
        elif key == "items":
            out["items"] = gemini_schema(value)
        elif key in (
            "enum",
            "required",
            "description",
            "format",
            "nullable",
            "minItems",
            "maxItems",
            "minimum",
            "maximum",
            "propertyOrdering",
        ):
            out[key] = value
    if "properties" in out and "propertyOrdering" not in out:
        out["propertyOrdering"] = list(out["properties"])
    return out


def to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions body as a Gemini GenerateContentRequest (REST JSON, camelCase; the model is
    the batch's, not the request's)."""
    _check_n(body, "Gemini")
    system, turns = _split_messages(body)
    req: dict[str, Any] = {
        "contents": [{"role": "model" if r == "assistant" else "user", "parts": [{"text": t}]} for r, t in turns]
    }
    if system is not None:
        req["systemInstruction"] = {"parts": [{"text": system}]}
    gen: dict[str, Any] = {}
    mt = body.get("max_completion_tokens") or body.get("max_tokens")
    if mt is not None:
        gen["maxOutputTokens"] = int(mt)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(ours) is not None:
            gen[theirs] = body[ours]
    stops = _stops(body)
    if stops:
        gen["stopSequences"] = stops
    schema = _schema_of(body)
    if schema is not None:
        gen["responseMimeType"] = "application/json"
        gen["responseSchema"] = gemini_schema(schema)
    if gen:
        req["generationConfig"] = gen
    for key, value in _passed_through(body, _TRANSLATED | {"seed"}, _GEMINI_NATIVE, "Gemini"):
        req[key] = {**req.get(key, {}), **value} if isinstance(value, dict) else value
    return req


def from_gemini(response: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A Gemini GenerateContentResponse as a chat.completion body (the first candidate's text parts joined)."""
    cand = (response.get("candidates") or [{}])[0]
    text = "".join(p.get("text") or "" for p in (cand.get("content") or {}).get("parts") or [] if not p.get("thought"))
    u = response.get("usageMetadata") or {}
    prompt, completion = int(u.get("promptTokenCount") or 0), int(u.get("candidatesTokenCount") or 0)
    return {
        "id": response.get("responseId"),
        "object": "chat.completion",
        "model": response.get("modelVersion", model),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": _FINISH.get(str(cand.get("finishReason")), "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(u.get("cachedContentTokenCount") or 0)},
        },
    }
