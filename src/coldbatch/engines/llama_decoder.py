"""The thread that owns the llama-cpp engine's llama context and answers its chat requests one after another.

Its own module because it is the engine's native half: every llama.cpp call a chat answer makes (KV cache,
decode, sampling, grammar) happens here, on one thread (a context is not thread-safe: owning it is the
lock), while `llamacpp.py` loads the model and validates, renders and tokenizes on the event loop's side.

Three things make the engine faster than calling
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
import logging
import queue
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from coldbatch.engines import base
from coldbatch.engines.base import Result, error_result
from coldbatch.engines.llama_chat import Params, completion
from coldbatch.errors import EngineClosed

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One chat request handed to the decoder: checked, tokenized, and the future its answer settles."""

    params: Params
    prompt: list[int]
    prefix: int  #: the first `prefix` prompt tokens are a canonical, reusable prefix (see Decoder)
    max_new: int
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop


@dataclass(eq=False)
class Samplers:
    """The native samplers of one job, freed when it ends."""

    chain: Any  #: llama_sampler chain (temperature, top_p, seed); None: greedy by argmax
    grammar: Any  #: llama_sampler for the grammar, or None


class Decoder:
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
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.stopped = False  # set before the final drain of `inbox` (see LlamaCppEngine.complete)
        self.prefixes: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # tokens -> saved KV state, LRU
        self.prefix_cache_bytes = prefix_cache_bytes

    def run(self) -> None:
        job: Job | None = None
        try:
            while (job := self.inbox.get()) is not None:
                if not job.future.done():  # else: cancelled while queued
                    deliver(job, self._generate(job))
        except BaseException as exc:
            logger.exception("llama-cpp worker died", extra={"action": "engine_worker_died"})
            if job is not None:
                deliver(job, EngineClosed(f"the llama-cpp engine worker died: {exc!r}"))
        self.stopped = True
        self.fail_queued()

    def _generate(self, job: Job) -> Result:
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
        return completion(
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
    def _samplers(self, p: Params) -> Samplers | None:
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
        return Samplers(chain, grammar)

    def _sample(self, s: Samplers, row: int) -> int:
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

    def _sample_constrained(self, s: Samplers, logits: Any) -> int:
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
                deliver(job, exc)

    def free_native(self) -> None:
        self.lib.llama_batch_free(self.batch)


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


def deliver(job: Job, outcome: Result | BaseException) -> None:
    base.settle_from_thread(job.loop, job.future, outcome)
