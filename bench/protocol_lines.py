"""Benchmark: the typed lines of `protocol/lines.py` against the hand-written dict code they replaced.

Over every request line of a prepared folder (default: the 2.4 M-row benchmark's 48 shards; keeping them all
in memory takes ~10 GB, so on a small machine point it at a few shards), alternating
ROUNDS times in this one process, medians compared:

- request lines: `orjson.loads(line)` then `["custom_id"]`, `["body"]` (the executor's and the runner's old
  loops) against `RequestLine.parse(line)` then `.custom_id`, `.body`;
- output lines: the executor's old `orjson.dumps({...})` of a result against `encode_response(...)`, and the
  runner's old dict walk of a read line against `OutputLine.parse(line)`, on one output line per request.

    python bench/prepare_2m4.py            # once, to have the shards (or: coldbatch prepare ... --out DIR)
    python bench/protocol_lines.py [DIR] [--rounds 3]

Prints a markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from coldbatch.jsonl import request_lines
from coldbatch.protocol.lines import OutputLine, RequestLine, encode_response
from coldbatch.validation import expand_paths

_common = __import__("_common")
BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 31, "completion_tokens": 1, "total_tokens": 32},
}


def old_requests(lines: list[bytes]) -> int:
    n = 0
    for line in lines:
        req = orjson.loads(line)
        n += len(req["custom_id"]) + len(req["body"])
    return n


def new_requests(lines: list[bytes]) -> int:
    n = 0
    parse = RequestLine.parse
    for line in lines:
        req = parse(line)
        n += len(req.custom_id) + len(req.body)
    return n


def old_encode(ids: list[str]) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "id": "batch_req_1",
                "custom_id": cid,
                "response": {"status_code": 200, "request_id": "req_1", "body": BODY},
                "error": None,
            }
        )
        for cid in ids
    ]


def new_encode(ids: list[str]) -> list[bytes]:
    return [encode_response("batch_req_1", cid, "req_1", 200, BODY) for cid in ids]


def old_outputs(lines: list[bytes]) -> int:
    n = 0
    for line in lines:
        rec = orjson.loads(line)
        resp = rec.get("response") or {}
        status = resp.get("status_code")
        if resp and (status is None or 200 <= int(status) < 300):
            n += len(resp.get("body") or {})
    return n


def new_outputs(lines: list[bytes]) -> int:
    n = 0
    parse = OutputLine.parse
    for line in lines:
        out = parse(line)
        if out.ok:
            n += len(out.body or {})
    return n


def timed(fn: Callable[[list], object], arg: list) -> float:  # type: ignore[type-arg]
    """CPU seconds of one pass (process time: robust to a machine shared with other work)."""
    gc.collect()
    t = time.process_time()
    fn(arg)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", default=str(_common.ROOT / "bench" / "out" / "coldbatch"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lines = [line for p in expand_paths([Path(args.folder)]) for _, line in request_lines(p)]
    ids = [RequestLine.parse(line).custom_id for line in lines]
    outputs = new_encode(ids)
    assert old_encode(ids[:1000]) == new_encode(ids[:1000])  # the same bytes
    pairs = {
        "request lines, parse": (old_requests, new_requests, lines),
        "output lines, encode": (old_encode, new_encode, ids),
        "output lines, parse": (old_outputs, new_outputs, outputs),
    }
    rows = []
    for name, (old, new, arg) in pairs.items():
        o, n = [], []
        for _ in range(args.rounds):
            o.append(timed(old, arg))
            n.append(timed(new, arg))
        mo, mn = statistics.median(o), statistics.median(n)
        rows.append(
            f"| {name} | {mo:.2f} s ({mo / len(arg) * 1e9:,.0f} ns/line) | {mn:.2f} s "
            f"({mn / len(arg) * 1e9:,.0f} ns/line) | {mn / mo:.2f}× |"
        )
    print(
        f"""### typed protocol lines vs hand-written dicts: {len(lines):,} lines \
(`python bench/protocol_lines.py --rounds {args.rounds}`)

- {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; date {time.strftime("%Y-%m-%d")}; \
medians of {args.rounds} alternating passes in one process, CPU time

| pass over every line | dicts (before) | protocol/lines.py | new / old |
|---|---:|---:|---:|
"""
        + "\n".join(rows)
    )


if __name__ == "__main__":
    main()
