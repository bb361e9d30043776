"""Benchmark: embeddings through `coldbatch serve` (llama-cpp engine) vs the same model called directly.

Same run, same texts (airline tweets), same model (all-MiniLM-L6-v2, converted to GGUF by the engine):
(a) raw, llama-cpp-python: `Llama(embedding=True).embed(texts, normalize=True)` on the converted GGUF, with
    as many tokens per call as the engine packs (512 a thread, n_seq_max 64);
(b) raw, coldbatch's `EmbeddingModel.embed` (the engine's packing, no server): in this process with every
    core's thread, and in P processes of one thread each, the texts split in P parts (P = the server's
    engine workers: the same parallelism the server has; the best raw figure is the baseline);
(c) the Batch API: a JSONL of one tweet per line uploaded with the official openai SDK to a
    `coldbatch serve` subprocess, create -> completed (validation, execution and result files included);
(d) the sync API: `client.embeddings.create(input=[100 tweets])` in a loop.
The server's embedding model is loaded by one warm-up request first (the engine loads it lazily).
Paths run in alternation, `--rounds` times each; medians are compared (the VM's speed drifts).

Usage: python bench/embeddings.py [--rows 1000] [--rounds 3] [--engine-workers N]. Prints a markdown block.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import multiprocessing.pool
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, free_port

from coldbatch.engines import bert_gguf, embedding

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "airline-tweets-200.csv"
TWEETS = SHARED / "data" / "airline-tweets" / "Tweets.csv"


def load_texts(n: int) -> list[str]:
    path = TWEETS if TWEETS.exists() else EXAMPLE
    with path.open(newline="", encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    return texts[:n]


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def raw_llama(llm: object, texts: list[str]) -> float:
    t = time.perf_counter()
    out = llm.embed(texts, normalize=True)  # type: ignore[attr-defined]
    assert len(out) == len(texts)
    return len(texts) / (time.perf_counter() - t)


def raw_engine(model: embedding.EmbeddingModel, texts: list[str]) -> float:
    t = time.perf_counter()
    vecs = model.embed([model.tokenize(x) for x in texts])
    assert vecs.shape[0] == len(texts)
    return len(texts) / (time.perf_counter() - t)


_MODEL: embedding.EmbeddingModel | None = None


def _load_one_thread() -> None:
    global _MODEL
    source = embedding.default_embedding_source()
    assert source is not None
    _MODEL = embedding.EmbeddingModel(source, n_threads=1)


def _embed_part(texts: list[str]) -> int:
    if not texts:  # warm-up task: the model is loaded by the initializer
        time.sleep(0.5)
        return 0
    assert _MODEL is not None
    return int(_MODEL.embed([_MODEL.tokenize(x) for x in texts]).shape[0])


def raw_processes(pool: multiprocessing.pool.Pool, processes: int, texts: list[str]) -> float:
    parts = [texts[i::processes] for i in range(processes)]
    t = time.perf_counter()
    assert sum(pool.map(_embed_part, parts, chunksize=1)) == len(texts)
    return len(texts) / (time.perf_counter() - t)


class Server:
    def __init__(self, work: Path, workers: int | None) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "coldbatch", "serve", "--port", str(self.port), "--data-dir", str(work / "srv")]
        if workers is not None:
            argv += ["--engine-workers", str(workers)]
        self.proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="bench", timeout=600)
        for _ in range(600):
            try:
                self.client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        self.client.embeddings.create(model=embedding.DEFAULT_EMBEDDING_MODEL, input="warm-up: load the model")
        self.work = work

    def batch_rate(self, texts: list[str]) -> float:
        path = self.work / "batch.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for i, text in enumerate(texts):
                fh.write(
                    json.dumps(
                        {
                            "custom_id": f"t{i}",
                            "method": "POST",
                            "url": embedding.EMBEDDINGS,
                            "body": {"model": embedding.DEFAULT_EMBEDDING_MODEL, "input": text},
                        }
                    )
                    + "\n"
                )
        f = self.client.files.create(file=path.open("rb"), purpose="batch")
        t = time.perf_counter()
        b = self.client.batches.create(input_file_id=f.id, endpoint=embedding.EMBEDDINGS, completion_window="24h")
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.1)
            b = self.client.batches.retrieve(b.id)
        elapsed = time.perf_counter() - t
        assert b.status == "completed" and b.output_file_id and b.request_counts.completed == len(texts), b
        return len(texts) / elapsed

    def sync_rate(self, texts: list[str], per_request: int = 100) -> float:
        t = time.perf_counter()
        for i in range(0, len(texts), per_request):
            r = self.client.embeddings.create(model=embedding.DEFAULT_EMBEDDING_MODEL, input=texts[i : i + per_request])
            assert len(r.data) == len(texts[i : i + per_request])
        return len(texts) / (time.perf_counter() - t)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine-workers", type=int, default=None, help="default: the server's own default")
    a = ap.parse_args()
    texts = load_texts(a.rows)
    load = os.getloadavg()[0]
    from llama_cpp import Llama

    source = embedding.default_embedding_source()
    assert source is not None, "the [local] extra's embedding model is not installed"
    procs = a.engine_workers or min(4, threads())  # the server's default: a llama-cpp worker per core, up to 4
    rates: dict[str, list[float]] = {"llama": [], "engine": [], "procs": [], "batch": [], "sync": []}
    with tempfile.TemporaryDirectory() as d:
        gguf = Path(d) / "all-MiniLM-L6-v2.F16.gguf"
        bert_gguf.convert(source, gguf)
        per_call = min(2048, 512 * threads())  # what the engine packs (see engines/embedding.py)
        llm = Llama(
            model_path=str(gguf),
            embedding=True,
            n_ctx=512,
            n_batch=per_call,
            n_ubatch=per_call,
            n_seq_max=64,
            n_threads=threads(),
            verbose=False,
        )
        model = embedding.EmbeddingModel(source, n_threads=threads())
        pool = multiprocessing.get_context("spawn").Pool(procs, initializer=_load_one_thread)
        pool.map(_embed_part, [[]] * procs, chunksize=1)
        server = Server(Path(d), a.engine_workers)
        try:
            for _ in range(a.rounds):
                rates["llama"].append(raw_llama(llm, texts))
                rates["batch"].append(server.batch_rate(texts))
                rates["engine"].append(raw_engine(model, texts))
                rates["sync"].append(server.sync_rate(texts))
                rates["procs"].append(raw_processes(pool, procs, texts))
        finally:
            server.close()
            model.close()
            pool.terminate()
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = max(med["llama"], med["engine"], med["procs"])
    rounds = [max(rates[k][i] for k in ("llama", "engine", "procs")) for i in range(a.rounds)]
    pairs = {k: [rates[k][i] / rounds[i] for i in range(a.rounds)] for k in ("batch", "sync")}
    paired = {k: f"{', '.join(f'{x:.0%}' for x in v)} (median {statistics.median(v):.0%})" for k, v in pairs.items()}
    runs = {k: ", ".join(f"{x:.1f}" for x in v) for k, v in rates.items()}
    workers = "server default" if a.engine_workers is None else str(a.engine_workers)
    print(f"""### Embeddings: `coldbatch serve` (llama-cpp engine) vs the model called directly ({len(texts)} tweets)

- command: `python bench/embeddings.py --rows {a.rows} --rounds {a.rounds}`{
        "" if a.engine_workers is None else f" --engine-workers {a.engine_workers}"
    }; {os.cpu_count()} CPUs, \
{platform.machine()}, Python {platform.python_version()}; date {time.strftime("%Y-%m-%d")}; load average at start \
{load:.2f}; engine workers: {workers}; raw paths use {threads()} threads
- all-MiniLM-L6-v2 (F16 GGUF converted from the `[local]` extra's safetensors), 384 dimensions, mean pooling

| path | texts/s (median) | runs |
|---|---:|---|
| raw llama-cpp-python `Llama.embed(texts)`, 1 process × {threads()} threads | {med["llama"]:.1f} | {runs["llama"]} |
| raw `EmbeddingModel.embed` (the engine's packing, no server), 1 process × {threads()} threads | \
{med["engine"]:.1f} | {runs["engine"]} |
| raw `EmbeddingModel.embed`, {procs} processes × 1 thread, texts split in {procs} | {med["procs"]:.1f} | \
{runs["procs"]} |
| Batch API: one tweet per line, create → completed | {med["batch"]:.1f} | {runs["batch"]} |
| sync API: `embeddings.create(input=[100 tweets])` in a loop | {med["sync"]:.1f} | {runs["sync"]} |

- Batch API / best raw median: **{med["batch"] / best:.0%}**; sync API / best raw: **{med["sync"] / best:.0%}** \
(goal ≥ 90 %)
- round by round, against the best raw path of the same round: Batch API {paired["batch"]}; sync API \
{paired["sync"]}
""")


if __name__ == "__main__":
    main()
