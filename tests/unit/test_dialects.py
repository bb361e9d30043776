"""server/dialects: Anthropic Messages and OpenAI Responses bodies ⇄ chat, for what the echo fixture cannot show
(tool calls, images, logprobs). Answers are checked against the official SDKs' types, strictly."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message
from openai.types.responses import Response

from coldbatch.engines.base import Result
from coldbatch.server.dialects import anthropic as A
from coldbatch.server.dialects import responses as R

USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 2}}


def chat_answer(message: dict[str, Any], finish: str = "stop", logprobs: Any = None) -> Result:
    return Result(
        200,
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "usage": USAGE,
            "choices": [
                {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, "logprobs": logprobs}
            ],
        },
        USAGE,
    )


def test_anthropic_tools_images_and_system_become_chat() -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Be terse."}],
        "stop_sequences": ["END"],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "tools": [{"name": "lookup", "description": "Find it", "input_schema": {"type": "object"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is "},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]},
        ],
    }
    chat = A.to_chat(body)
    assert chat["messages"][0] == {"role": "system", "content": "Be terse."}
    assert chat["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA"},
    }
    assert chat["messages"][2]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"q":"x"}'}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "42"}
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object"}
    assert (chat["tool_choice"], chat["parallel_tool_calls"], chat["stop"]) == ("required", False, ["END"])


def test_anthropic_answer_with_a_tool_call_is_an_sdk_message() -> None:
    res = A.from_chat(
        chat_answer(
            {
                "content": None,
                "tool_calls": [
                    {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "y"}'}}
                ],
            },
            "tool_calls",
        ),
        {"model": "claude-x"},
    )
    msg = Message.model_validate(res.body)
    assert msg.stop_reason == "tool_use" and msg.content[0].type == "tool_use"
    assert msg.content[0].input == {"q": "y"} and msg.usage.input_tokens == 10  # cache reads are apart
    assert msg.usage.cache_read_input_tokens == 2


def test_anthropic_engine_error_gets_anthropic_envelope() -> None:
    res = A.from_chat(Result(503, {"error": {"message": "busy", "type": "server_error"}}), {"model": "m"})
    assert res.status_code == 503 and res.body["error"] == {"type": "overloaded_error", "message": "busy"}


def test_unsupported_anthropic_blocks_and_server_tools_are_refused_by_name() -> None:
    base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(A.Unsupported, match=r"tools\.0"):
        A.to_chat({**base, "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    with pytest.raises(A.Unsupported, match="stream"):
        A.to_chat({**base, "stream": True})


def test_responses_function_calls_and_logprobs_round_trip() -> None:
    body = {
        "model": "gpt-x",
        "instructions": "Sys.",
        "top_logprobs": 2,
        "tool_choice": {"type": "function", "name": "f"},
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        "input": [
            {"role": "developer", "content": "Dev."},
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
    }
    chat = R.to_chat(body)
    assert [m["role"] for m in chat["messages"]] == ["system", "system", "user", "assistant", "tool"]
    assert chat["messages"][3]["tool_calls"][0]["id"] == "c1" and chat["logprobs"] is True
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    lp = {
        "content": [
            {
                "token": "ok",
                "logprob": -0.1,
                "bytes": [111, 107],
                "top_logprobs": [{"token": "ok", "logprob": -0.1, "bytes": [111, 107]}],
            }
        ]
    }
    res = R.from_chat(
        chat_answer(
            {
                "content": "ok",
                "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            logprobs=lp,
        ),
        body,
    )
    resp = Response.model_validate(res.body)
    assert resp.output_text == "ok" and resp.output[1].type == "function_call"
    assert resp.output[0].content[0].logprobs[0].logprob == -0.1  # type: ignore[union-attr]
    assert resp.usage is not None and resp.usage.input_tokens_details.cached_tokens == 2
