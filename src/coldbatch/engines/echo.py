"""`echo`: a deterministic, instant engine — a TEST AND BENCHMARK FIXTURE, never a model.

It answers every endpoint in the right shape: chat returns the last user message (or, when the
request carries a JSON-schema `response_format` with an enum, one of the enum values chosen by a
stable hash of the text), embeddings return a small hash-derived vector. `usage` counts prompt tokens
with the same tokenizer and accounting as `coldbatch estimate`, so estimates can be checked against it.
Optional `latency` (seconds per request; requests overlap up to `max_concurrency`) and `failure_rate`
(a fraction of requests answered with HTTP 500, drawn from a seeded RNG) simulate a real backend.

Fixture features for tests (never in a real engine):

- `"echo_fail": <status>` in a request body (an integer 400-599) makes the engine answer that HTTP
  status with an OpenAI error body (`{"error": {"message", "type", "param", "code": "echo_fail"}}`)
  instead of a result: a deterministic per-line failure, e.g. for mixed or all-failing batches.
- `models=` restricts the model names the engine claims to serve (default None: any name), so the
  server's validation reports `model_not_found` for the others.
- `"echo_crash": "segv" | "abort" | "kill"` in a request body kills the process answering it (a real
  SIGSEGV, an abort, a SIGKILL as the OOM killer sends): the crash a native engine can have. Only in an
  engine worker process (`serve --engine-workers N`); in-process it is refused with a 400.
- `crash_at_start_if=PATH`: a worker whose engine is built while PATH exists segfaults at start-up
  (a worker that can never start, e.g. a CPU the native code cannot run on).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import random
import signal
import time
import zlib
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from coldbatch.engines import base
from coldbatch.engines.base import EngineInfo, Result, error_result
from coldbatch.errors import ConfigError
from coldbatch.estimate import tokens as T
from coldbatch.estimate.accounting import prompt_texts
from coldbatch.protocol import limits as L
from coldbatch.protocol.batches import seq_id

ENDPOINTS = frozenset({L.CHAT, L.EMBEDDINGS, L.COMPLETIONS, L.RESPONSES, L.MODERATIONS})


class EchoEngine:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        failure_rate: float = 0.0,
        seed: int = 0,
        max_concurrency: int = 256,
        models: Collection[str] | None = None,
        crash_at_start_if: str | None = None,
    ) -> None:
        if not 0 <= failure_rate <= 1:
            raise ValueError("failure_rate must be within [0, 1]")
        if crash_at_start_if is not None and os.path.exists(crash_at_start_if):
            if not base.IN_WORKER_PROCESS:
                raise ConfigError("echo: crash_at_start_if only crashes engine worker processes")
            faulthandler._sigsegv()  # a real segmentation fault, as native code would have
        self.latency = latency
        self.failure_rate = failure_rate
        self._rng = random.Random(seed)
        self._counter = T.counter("o200k_base")
        self.info = EngineInfo(
            name="echo",
            endpoints=ENDPOINTS,
            models=frozenset(models) if models is not None else None,
            max_concurrency=max_concurrency,
            fixture=True,
        )

    async def complete(self, endpoint: str, body: dict[str, Any]) -> Result:
        return (await self.complete_many(endpoint, [body]))[0]

    async def complete_many(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result]:
        """Answer several requests at once (they overlap: one `latency` for the group)."""
        if self.latency:
            await asyncio.sleep(self.latency)
        async with base.cpu_turn():  # in-process, this is the server's CPU: a batch's groups take turns
            texts: list[str] = []
            spans: list[tuple[int, int, int]] = []
            for body in bodies:
                t, overhead = prompt_texts(body, endpoint)
                spans.append((len(texts), len(t), overhead))
                texts.extend(t)
            counts = self._counter.count_many(texts)
            known = dict(zip(texts, counts, strict=True))  # an answer is most often a prompt text: counted once
            return [
                self._answer(endpoint, body, sum(counts[a : a + n]) + overhead, known)
                for body, (a, n, overhead) in zip(bodies, spans, strict=True)
            ]

    def _answer(self, endpoint: str, body: dict[str, Any], prompt_tokens: int, known: dict[str, int]) -> Result:
        if endpoint not in ENDPOINTS:
            return error_result(400, f"The echo engine does not serve {endpoint}.", param="url")
        failure = self._failure(body)
        if failure is not None:
            return failure
        model = str(body.get("model") or "echo")
        if endpoint == L.EMBEDDINGS:
            return self._embedding(body, model, prompt_tokens)
        if endpoint == L.MODERATIONS:
            return Result(
                200,
                {
                    "id": seq_id("modr-"),
                    "model": model,
                    "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
                },
            )
        text = _answer_text(body)
        completion = known.get(text)
        if completion is None:
            completion = self._counter.count_many([text])[0] if text else 0
        limit = _max_tokens(body, endpoint)
        finish = "stop"
        # As a model does: stop at the limit and say so. The text is cut in proportion (the same share of its
        # characters as of its tokens): re-encoding every answer cost the server 20 % more CPU per batch.
        if limit is not None and completion > limit:
            text, completion, finish = text[: len(text) * limit // completion], limit, "length"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        shape = _chat_body if endpoint == L.CHAT else _completions_body if endpoint == L.COMPLETIONS else _response_body
        return Result(200, shape(model, text, finish, usage), usage)

    def _failure(self, body: dict[str, Any]) -> Result | None:
        """The failure this request asks for (`echo_crash`, `echo_fail`) or draws (`failure_rate`); None: answer it."""
        crash = body.get("echo_crash")
        if crash is not None:
            return _crash(crash)
        fail = body.get("echo_fail")
        if isinstance(fail, int) and not isinstance(fail, bool) and 400 <= fail <= 599:
            return error_result(
                fail,
                f"echo engine: failure requested by the request body (echo_fail={fail})",
                type_="server_error" if fail >= 500 else "invalid_request_error",
                param="echo_fail",
                code="echo_fail",
            )
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return error_result(
                500, "echo engine: injected failure (failure_rate)", type_="server_error", code="engine_error"
            )
        return None

    def _embedding(self, body: dict[str, Any], model: str, prompt_tokens: int) -> Result:
        inp = body.get("input")
        items = [inp] if isinstance(inp, str) else list(inp or [])
        data = []
        for i, item in enumerate(items):
            seed = zlib.crc32(orjson.dumps(item))
            vec = [((seed >> (4 * k)) & 0xF) / 15.0 - 0.5 for k in range(8)]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return Result(200, {"object": "list", "data": data, "model": model, "usage": usage}, usage)

    async def aclose(self) -> None:
        return None


def _crash(how: object) -> Result:
    """Kill this process the way `how` says (worker processes only); a 400 anywhere else."""
    if how not in ("segv", "abort", "kill"):
        return error_result(400, "echo_crash must be 'segv', 'abort' or 'kill'", param="echo_crash")
    if not base.IN_WORKER_PROCESS:
        return error_result(
            400,
            "echo_crash only works in an engine worker process (serve --engine-workers N)",
            param="echo_crash",
            code="echo_crash_refused",
        )
    if how == "segv":
        faulthandler._sigsegv()
    elif how == "abort":
        os.abort()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process is dead")


_CAP_KEYS = ("max_completion_tokens", "max_tokens")
_RESPONSES_CAP_KEYS = ("max_output_tokens",)


def _max_tokens(body: dict[str, Any], endpoint: str) -> int | None:
    """The request's cap on answer tokens (each endpoint names it its own way); None when it has none."""
    for key in _RESPONSES_CAP_KEYS if endpoint == L.RESPONSES else _CAP_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _last_user_text(body: dict[str, Any]) -> str:
    prompt, inp = body.get("prompt"), body.get("input")
    if isinstance(prompt, str):
        return prompt
    if isinstance(inp, str):
        return inp
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return ""


def _chat_body(model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": seq_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
        "system_fingerprint": "echo",
    }


def _completions_body(model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": seq_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def _response_body(model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    """A Responses API `response` (its own usage names; `usage` stays the chat-style one the server accounts)."""
    prompt_tokens, completion = usage["prompt_tokens"], usage["completion_tokens"]
    incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
    return {
        "id": seq_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": incomplete,
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": prompt_tokens,
            "output_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _answer_text(body: dict[str, Any]) -> str:
    text = _last_user_text(body)
    rf = body.get("response_format")
    if rf is None:  # (most requests: a plain answer)
        return text
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        props = ((rf.get("json_schema") or {}).get("schema") or {}).get("properties") or {}
        for name, prop in props.items():
            if isinstance(prop, dict) and isinstance(prop.get("enum"), list) and prop["enum"]:
                choice = prop["enum"][zlib.crc32(text.encode()) % len(prop["enum"])]
                return orjson.dumps({name: choice}).decode()
    if isinstance(rf, dict) and rf.get("type") == "json_object":
        return orjson.dumps({"echo": text}).decode()
    return text
