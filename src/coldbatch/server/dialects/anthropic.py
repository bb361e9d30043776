"""Anthropic's Messages API ⇄ the engine's chat completions, and the Message Batches wire objects.

Every engine speaks OpenAI chat; an Anthropic request is translated to a chat body (`to_chat`), the
chat answer back to a `Message` (`from_chat`), and an engine error to Anthropic's envelope
`{"type": "error", "error": {"type", "message"}}`. The shapes follow the official `anthropic` SDK's
types (`types/message.py`, `types/messages/message_batch*.py`, `types/shared/error_*.py`).

What has no chat counterpart is refused with a 400 naming the field (server tools, documents,
`stream`), never dropped silently; `thinking`, `metadata`, `cache_control` and `service_tier` change
nothing a local engine does and are accepted and ignored (docs/server.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson

from coldbatch.core.bodies import check_body
from coldbatch.engines.base import Result
from coldbatch.protocol.batches import seq_id

MESSAGES: Final = "/v1/messages"
#: HTTP status → Anthropic error type (types/shared/error_type.py); anything else 5xx is `api_error`
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_CHAT_FIELDS: Final = ("temperature", "top_p", "top_k")  # not in the SDK's params any more, still passed on


class Unsupported(ValueError):
    """A request the engine cannot answer faithfully: a 400 `invalid_request_error` naming `param`."""


def error_envelope(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {
            "type": ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"),
            "message": message,
        },
        "request_id": None,
    }


def error_result(status: int, message: str) -> Result:
    return Result(status, error_envelope(status, message))


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions body that asks the engine what `body` (a Messages API request) asks.

    Raises:
        Unsupported: the body breaks the Messages API schema, or asks for something chat cannot express.
    """
    problems = check_body(MESSAGES, body)
    if problems:
        param, _code, message = problems[0]
        message = message.replace("'body.", "'")
        raise Unsupported(f"{param.removeprefix('body.')}: {message}")
    if body.get("stream"):
        raise Unsupported("stream: streaming is not supported by this server.")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": system if isinstance(system, str) else _text_of(system)})
    for i, msg in enumerate(body["messages"]):
        out.extend(_message(i, msg))
    chat: dict[str, Any] = {"model": body["model"], "messages": out, "max_tokens": body["max_tokens"]}
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    chat.update({k: body[k] for k in _CHAT_FIELDS if body.get(k) is not None})
    fmt = (body.get("output_config") or {}).get("format")
    if fmt:
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True},
        }
    if body.get("tools"):
        chat["tools"] = [_tool(i, t) for i, t in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if choice:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(choice["type"]) or {
            "type": "function",
            "function": {"name": choice.get("name")},
        }
        if choice.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    return chat


def _text_of(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")


def _message(i: int, msg: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results become `tool` messages of their own."""
    role, content = msg["role"], msg["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and (block.get("source") or {}).get("type") in ("base64", "url"):
            src = block["source"]
            url = src["url"] if src["type"] == "url" else f"data:{src['media_type']};base64,{src['data']}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": orjson.dumps(block.get("input") or {}).decode()},
                }
            )
        elif kind == "tool_result":
            result = block.get("content")
            tools.append(
                {
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"],
                    "content": result if isinstance(result, str) else _text_of(result or []),
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):  # earlier turns' reasoning: nothing to send
            raise Unsupported(f"messages.{i}.content.{j}.type: '{kind}' blocks are not supported by this server.")
    out = list(tools)
    if parts or calls:
        text_only = all(p["type"] == "text" for p in parts)
        m: dict[str, Any] = {"role": role, "content": "".join(p["text"] for p in parts) if text_only else parts}
        if calls:
            m["tool_calls"] = calls
        out.append(m)
    return out


def _tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
        raise Unsupported(f"tools.{i}: only client tools (name, input_schema) are supported by this server.")
    fn = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


def from_chat(res: Result, body: dict[str, Any]) -> Result:
    """The engine's chat answer to `body` as a `Message` (or its error in Anthropic's envelope)."""
    if not res.ok:
        err = res.body.get("error") if isinstance(res.body, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        return Result(res.status_code, error_envelope(res.status_code, str(message or "The engine failed.")), res.usage)
    choice = (res.body.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content") or not msg.get("tool_calls"):
        content.append({"type": "text", "text": msg.get("content") or "", "citations": None})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {"_raw": fn.get("arguments")}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or seq_id("toolu_"),
                "name": fn.get("name"),
                "input": args,
                "caller": None,
            }
        )
    u = res.usage
    details: Any = u.get("prompt_tokens_details") or {}  # a nested object, though Result types usage as counts
    cached = details.get("cached_tokens") or 0
    usage = {
        "input_tokens": u.get("prompt_tokens", 0) - cached,
        "output_tokens": u.get("completion_tokens", 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "cache_creation": None,
        "server_tool_use": None,
        "service_tier": "standard",
    }
    return Result(
        200,
        {
            "id": seq_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": _STOP.get(choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None,
            "stop_details": None,
            "container": None,
            "usage": usage,
        },
        u,
    )


# -- Message Batches -----------------------------------------------------------------------------------------
def batch_id(stored: str) -> str:
    """Stored ids are `batch_…` like every batch; Anthropic's are `msgbatch_…` with the same suffix."""
    return "msgbatch_" + stored.removeprefix("batch_")


def stored_id(msgbatch: str) -> str | None:
    return "batch_" + msgbatch[9:] if msgbatch.startswith("msgbatch_") and len(msgbatch) > 9 else None


def _time(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


ENDED: Final = ("completed", "failed", "expired", "cancelled")


def batch_object(row: dict[str, Any], results_url: str, never_run: int) -> dict[str, Any]:
    """A stored batch row as a `MessageBatch`. `never_run`: the lines of a cancelled or expired batch's error
    file written for requests that never ran (the rest of `failed` errored; every request neither succeeded
    nor errored is canceled/expired)."""
    status = row["status"]
    ended = status in ENDED
    counts = {"processing": 0 if ended else row["total"], "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if status == "failed":
        counts["errored"] = row["total"]
    elif ended:
        errored = row["failed"] - never_run
        counts.update(succeeded=row["completed"], errored=errored)
        if status in ("cancelled", "expired"):  # (also those never reached: cancelled while validating)
            counts["canceled" if status == "cancelled" else "expired"] = row["total"] - row["completed"] - errored
    return {
        "id": batch_id(row["id"]),
        "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if status == "cancelling" else "in_progress",
        "request_counts": counts,
        "created_at": _time(row["created_at"]),
        "expires_at": _time(row["expires_at"]),
        "ended_at": _time(row.get(f"{status}_at")) if ended else None,
        "cancel_initiated_at": _time(row["cancelling_at"]),
        "archived_at": None,
        "results_url": results_url if ended else None,
    }


def result_line(line: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch's output or error file as a `MessageBatchIndividualResponse`."""
    response, error = line.get("response"), line.get("error") or {}
    if response is None:
        kind = {"batch_cancelled": "canceled", "batch_expired": "expired"}.get(error.get("code") or "")
        result: dict[str, Any] = (
            {"type": kind}
            if kind
            else {"type": "errored", "error": error_envelope(500, error.get("message") or "The request failed.")}
        )
    elif 200 <= response["status_code"] < 300:
        result = {"type": "succeeded", "message": response["body"]}
    else:
        body = response["body"]
        if not (isinstance(body, dict) and body.get("type") == "error"):
            msg = ((body or {}).get("error") or {}).get("message") if isinstance(body, dict) else None
            body = error_envelope(response["status_code"], msg or "The request failed.")
        result = {"type": "errored", "error": body}
    return {"custom_id": line["custom_id"], "result": result}
