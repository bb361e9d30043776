"""OpenAI's Responses API ⇄ the engine's chat completions (sync `/v1/responses` and batch lines).

`to_chat` turns `input` (a string or a list of message / function_call / function_call_output items)
and `instructions` into chat messages, `text.format` into `response_format`, `max_output_tokens` into
`max_tokens`, function tools into chat tools and `top_logprobs` into chat's logprobs. `from_chat`
builds the `Response` object the SDK parses (`types/responses/response.py`): one `message` output item
with one `output_text` part (its `logprobs` when asked), one `function_call` item per tool call, and
`usage` in input/output tokens. Errors keep OpenAI's envelope.

Refused with a 400 naming the field, because a local engine cannot honour them: `stream`,
`background`, `previous_response_id`/`conversation` (no stored responses), non-function tools.
"""

from __future__ import annotations

import time
from typing import Any, Final

from coldbatch.core.bodies import check_body
from coldbatch.engines.base import Result
from coldbatch.engines.base import error_result as _openai_error
from coldbatch.protocol import limits as L
from coldbatch.protocol.batches import seq_id

_PASS: Final = ("temperature", "top_p", "parallel_tool_calls", "seed")
_REFUSED: Final = ("stream", "background", "previous_response_id", "conversation", "prompt")
_ROLES: Final = {"developer": "system", "system": "system", "user": "user", "assistant": "assistant"}


class Unsupported(ValueError):
    """A request this server cannot answer faithfully: a 400 `invalid_request_error` naming `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def error_result(status: int, message: str) -> Result:
    param = message.split(":", 1)[0] if ":" in message else None
    return _openai_error(status, message, param=param)


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks the engine what `body` (a Responses API request) asks.

    Raises:
        Unsupported: the body breaks the Responses schema or asks for what chat cannot express.
    """
    problems = check_body(L.RESPONSES, body)
    if problems:
        param, _code, message = problems[0]
        message = message.replace("'body.", "'")
        raise Unsupported(param, f"{param.removeprefix('body.')}: {message}")
    for key in _REFUSED:
        if body.get(key):
            raise Unsupported(key, f"{key}: not supported by this server.")
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    inp = body.get("input")
    if inp is None:  # optional in the schema (a stored prompt, a previous response), which this server has not
        raise Unsupported("input", "input: required by this server (it keeps no stored prompts or responses).")
    items = [{"role": "user", "content": inp}] if isinstance(inp, str) else inp
    for i, item in enumerate(items):
        _add_item(messages, i, item)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    chat.update({k: body[k] for k in _PASS if body.get(k) is not None})
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    _options(body, chat)
    return chat


def _options(body: dict[str, Any], chat: dict[str, Any]) -> None:
    """Structured output, logprobs and tools, in chat's terms."""
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt},
        }
    elif fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if body.get("top_logprobs") is not None or "message.output_text.logprobs" in (body.get("include") or ()):
        chat["logprobs"] = True
        chat["top_logprobs"] = body.get("top_logprobs") or 0
    if body.get("tools"):
        chat["tools"] = [_tool(i, t) for i, t in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}


def _add_item(messages: list[dict[str, Any]], i: int, item: dict[str, Any]) -> None:
    kind = item.get("type", "message")
    if kind == "message" and "role" in item:
        content = item["content"]
        if not isinstance(content, str):
            content = _parts(i, content)
        messages.append({"role": _ROLES.get(item["role"], item["role"]), "content": content})
    elif kind == "function_call":
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls") is not None:
            messages[-1]["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        out = item["output"]
        messages.append(
            {
                "role": "tool",
                "tool_call_id": item["call_id"],
                "content": out if isinstance(out, str) else str(_parts(i, out)),
            }
        )
    else:
        raise Unsupported(f"input[{i}].type", f"input[{i}].type: '{kind}' items are not supported by this server.")


def _parts(i: int, content: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Input content parts as chat content: text only → one string; images → chat's image_url parts."""
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and part.get("image_url"):
            parts.append(
                {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}}
            )
        else:
            raise Unsupported(
                f"input[{i}].content[{j}]", f"input[{i}].content[{j}].type: '{kind}' is not supported by this server."
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Unsupported(f"tools[{i}].type", f"tools[{i}].type: only function tools are supported by this server.")
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def from_chat(res: Result, body: dict[str, Any]) -> Result:
    """The engine's chat answer to `body` as a `Response` object (errors pass through: same envelope)."""
    if not res.ok:
        return res
    choice = (res.body.get("choices") or [{}])[0]
    output = _output_items(choice)
    u = res.usage
    cut = choice.get("finish_reason") == "length"
    now = int(time.time())
    return Result(
        200,
        {
            "id": seq_id("resp_"),
            "object": "response",
            "created_at": now,
            "completed_at": now,
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "error": None,
            "model": body["model"],
            "output": output,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata") or {},
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "max_output_tokens": body.get("max_output_tokens"),
            "top_logprobs": body.get("top_logprobs"),
            "text": body.get("text") or {"format": {"type": "text"}},
            "previous_response_id": None,
            "usage": _usage(u),
        },
        u,
    )


def _output_items(choice: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat choice as Responses output items: its text as one `message` (unless it is only tool calls),
    then one `function_call` per tool call."""
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if msg.get("content") is not None or not msg.get("tool_calls"):
        text: dict[str, Any] = {"type": "output_text", "text": msg.get("content") or "", "annotations": []}
        lp = (choice.get("logprobs") or {}).get("content")
        if lp is not None:
            text["logprobs"] = [_logprob(t) for t in lp]
        output.append(
            {"id": seq_id("msg_"), "type": "message", "role": "assistant", "status": "completed", "content": [text]}
        )
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append(
            {
                "id": seq_id("fc_"),
                "type": "function_call",
                "call_id": call.get("id"),
                "name": fn.get("name"),
                "arguments": fn.get("arguments") or "{}",
                "status": "completed",
            }
        )
    return output


def _logprob(t: dict[str, Any]) -> dict[str, Any]:
    """One chat `logprobs.content` entry as an `output_text` logprob (bytes always a list)."""
    return {
        "token": t["token"],
        "bytes": t.get("bytes") or [],
        "logprob": t["logprob"],
        "top_logprobs": [
            {"token": a["token"], "bytes": a.get("bytes") or [], "logprob": a["logprob"]}
            for a in t.get("top_logprobs") or []
        ],
    }


def _usage(u: dict[str, Any]) -> dict[str, Any]:
    """Chat usage (prompt/completion tokens) in the Responses API's input/output names."""
    prompt, completion = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
