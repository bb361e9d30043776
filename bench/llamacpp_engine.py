"""Benchmark: the llama-cpp engine against the raw model on airline-tweet sentiment labels.

(a) raw: llama-cpp-python's `Llama.create_chat_completion` in a loop, with the same prompt and the label
    grammar (what a user would write by hand; flash attention off, llama-cpp-python's default).
(b) engine: `LlamaCppEngine.complete` with `info.max_concurrency` requests in flight, through the same
    OpenAI-style body the server passes (`response_format` json_schema with the label enum).

Both decode greedily (temperature 0). Prints a markdown block: req/s of each, their ratio, the label
accuracy against the `airline_sentiment` column and whether every answer was a valid label. The 2 cores
of the dev machine are often shared with other work: the load average is printed, and the two paths
run in alternating blocks of rows so that both see the same conditions.

    .venv/bin/python bench/llamacpp_engine.py [--rows 200] [--block 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from coldbatch.engines.llamacpp import LlamaCppEngine, default_model_path

TWEETS = Path(__file__).resolve().parents[1].parent / "shared/data/airline-tweets/Tweets.csv"
LABELS = ["negative", "neutral", "positive"]
SYSTEM = (
    'Classify the user\'s text. Answer with JSON {"label": ...} where label is exactly one of: '
    + ", ".join(LABELS)
    + "."
)
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": SCHEMA}}


def load_rows(n: int) -> list[dict[str, str]]:
    with TWEETS.open(newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            rows.append(row)
            if len(rows) == n:
                return rows
    return rows


def messages(row: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["text"]}]


def label_of(content: str) -> str | None:
    try:
        label = json.loads(content)["label"]
    except (ValueError, KeyError, TypeError):
        return None
    return label if label in LABELS else None


class Raw:
    """llama-cpp-python used by hand: `create_chat_completion` with the label grammar, one call at a time."""

    def __init__(self, threads: int) -> None:
        from llama_cpp import Llama, LlamaGrammar

        self.llm = Llama(
            model_path=str(default_model_path()), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False
        )
        self.grammar = LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)

    def run(self, rows: list[dict[str, str]]) -> list[str | None]:
        answers = []
        for row in rows:
            out: Any = self.llm.create_chat_completion(
                messages=messages(row), grammar=self.grammar, temperature=0, max_tokens=20
            )
            answers.append(label_of(out["choices"][0]["message"]["content"]))
        return answers


async def run_engine(engine: LlamaCppEngine, rows: list[dict[str, str]]) -> list[str | None]:
    """The server's way: `complete` with up to `info.max_concurrency` requests in flight."""
    limit = asyncio.Semaphore(engine.info.max_concurrency)

    async def one(row: dict[str, str]) -> str | None:
        async with limit:
            result = await engine.complete(
                "/v1/chat/completions",
                {
                    "model": "gpt-4o-mini",
                    "messages": messages(row),
                    "temperature": 0,
                    "response_format": RESPONSE_FORMAT,
                },
            )
        return label_of(result.body["choices"][0]["message"]["content"]) if result.ok else None

    return list(await asyncio.gather(*(one(row) for row in rows)))


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def accuracy(rows: list[dict[str, str]], answers: list[str | None]) -> tuple[int, int]:
    correct = sum(a == r["airline_sentiment"] for a, r in zip(answers, rows, strict=True))
    return correct, sum(a is not None for a in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--block", type=int, default=10, help="rows per interleaved block")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = load_rows(args.rows)
    raw, engine = Raw(args.threads), LlamaCppEngine(n_threads=args.threads)
    raw.run(rows[:2])  # warm both up
    asyncio.run(run_engine(engine, rows[:2]))
    raw_time = engine_time = 0.0
    raw_answers: list[str | None] = []
    engine_answers: list[str | None] = []
    loads = [os.getloadavg()[0]]
    for i in range(0, len(rows), args.block):
        block = rows[i : i + args.block]
        t_raw, a_raw = timed(raw.run, block)
        t_eng, a_eng = timed(lambda b: asyncio.run(run_engine(engine, b)), block)
        raw_time, engine_time = raw_time + t_raw, engine_time + t_eng
        raw_answers += a_raw
        engine_answers += a_eng
    loads.append(os.getloadavg()[0])
    concurrency = engine.info.max_concurrency
    asyncio.run(engine.aclose())
    n = len(rows)
    raw_rate, engine_rate = n / raw_time, n / engine_time
    raw_ok, raw_valid = accuracy(rows, raw_answers)
    eng_ok, eng_valid = accuracy(rows, engine_answers)
    print(f"### llama-cpp engine vs raw model ({n} airline tweets, labels {', '.join(LABELS)})\n")
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, n_threads={args.threads}, model "
        f"{default_model_path().name}, greedy. The two paths run in alternating blocks of {args.block} rows "
        f"so that both see the same background load (1-min load average {loads[0]:.1f} at start, "
        f"{loads[1]:.1f} at end).\n"
    )
    print("| path | req/s | valid labels | accuracy vs `airline_sentiment` |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| raw `Llama.create_chat_completion` + grammar, sequential loop | {raw_rate:.2f} | "
        f"{raw_valid}/{n} | {raw_ok / n:.1%} |"
    )
    print(
        f"| `LlamaCppEngine.complete`, concurrency {concurrency} | {engine_rate:.2f} | "
        f"{eng_valid}/{n} | {eng_ok / n:.1%} |"
    )
    print(
        f"\nEngine / raw: **{engine_rate / raw_rate:.2f}x**. Answers that differ between the two paths: "
        f"{sum(a != b for a, b in zip(raw_answers, engine_answers, strict=True))}/{n} (flash attention "
        "changes near-tie logits; each path is deterministic on its own)."
    )


if __name__ == "__main__":
    main()
