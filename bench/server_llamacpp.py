"""Benchmark: a batch through `coldbatch serve --engine llama-cpp` vs the same model called directly.

Same run, same rows (airline tweets), same prompt and label grammar, greedy:
(a) raw: llama-cpp-python `create_chat_completion` in a loop (flash attention on and off; the best
    figure is the baseline);
(b) the Batch API: upload a JSONL with the official openai SDK to a `coldbatch serve --engine llama-cpp`
    subprocess, create the batch, poll until completed (validate + execute + write included).
Usage: python bench/server_llamacpp.py [--rows 100]. Prints a markdown block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port
from llamacpp_engine import RESPONSE_FORMAT, SCHEMA, label_of, load_rows, messages

from coldbatch.engines.llamacpp import default_model_path


def raw_rate(rows: list[dict[str, str]], flash: bool) -> tuple[float, int]:
    from llama_cpp import Llama, LlamaGrammar

    llm = Llama(
        model_path=str(default_model_path()), n_ctx=2048, n_threads=2, n_batch=512, flash_attn=flash, verbose=False
    )
    grammar = LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)
    t = time.perf_counter()
    valid = 0
    for row in rows:
        out = llm.create_chat_completion(messages=messages(row), grammar=grammar, temperature=0, max_tokens=32)
        valid += label_of(out["choices"][0]["message"]["content"] or "") is not None
    return len(rows) / (time.perf_counter() - t), valid


def server_rate(rows: list[dict[str, str]], work: Path) -> tuple[float, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "llama-cpp",
            "--port",
            str(port),
            "--data-dir",
            str(work / "srv"),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench")
        for _ in range(300):
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        path = work / "batch.jsonl"
        with path.open("w") as fh:
            for i, row in enumerate(rows):
                body = {
                    "model": "SmolLM2-135M-Instruct",
                    "messages": messages(row),
                    "temperature": 0,
                    "max_tokens": 32,
                    "response_format": RESPONSE_FORMAT,
                }
                fh.write(
                    json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                    + "\n"
                )
        f = client.files.create(file=path.open("rb"), purpose="batch")
        t = time.perf_counter()
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.2)
            b = client.batches.retrieve(b.id)
        elapsed = time.perf_counter() - t
        assert b.status == "completed" and b.output_file_id, b
        lines = client.files.content(b.output_file_id).text.splitlines()
        valid = sum(
            label_of(json.loads(x)["response"]["body"]["choices"][0]["message"]["content"]) is not None for x in lines
        )
        return len(rows) / elapsed, valid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100)
    a = ap.parse_args()
    rows = load_rows(a.rows)
    load = os.getloadavg()[0]
    raw_off, v_off = raw_rate(rows, flash=False)
    raw_on, v_on = raw_rate(rows, flash=True)
    with tempfile.TemporaryDirectory() as d:
        srv, v_srv = server_rate(rows, Path(d))
    best = max(raw_off, raw_on)
    print(f"""### llama-cpp: a batch through `coldbatch serve` vs the model called directly ({a.rows} tweets)

- command: `python bench/server_llamacpp.py --rows {a.rows}`; {os.cpu_count()} CPUs, {platform.machine()}, \
Python {platform.python_version()}; date {time.strftime("%Y-%m-%d")}; load average at start {load:.2f}
- SmolLM2-135M-Instruct Q4_1, greedy, label grammar, max_tokens 32, n_threads 2

| path | req/s | valid labels |
|---|---:|---:|
| raw `create_chat_completion` loop, flash attention off | {raw_off:.2f} | {v_off}/{a.rows} |
| raw `create_chat_completion` loop, flash attention on | {raw_on:.2f} | {v_on}/{a.rows} |
| Batch API: `coldbatch serve --engine llama-cpp` (create → completed) | {srv:.2f} | {v_srv}/{a.rows} |

- batch throughput / best raw figure: **{srv / best:.0%}** (goal ≥ 90 %)
""")


if __name__ == "__main__":
    main()
