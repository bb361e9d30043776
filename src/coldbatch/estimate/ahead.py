"""Prompt tokens of request files counted in a helper process, ahead of the pass that estimates and plans.

Counting tokens (parse, prompt texts, tiktoken) is a third of the 2.4 M-row send-plan pass, and while a job
prepares nothing else runs: the server waits for uploads, and the second core is idle. So for a large job a
helper process counts the files the main pass has not reached yet, with the very `Accumulator` rules the main
pass uses, and hands back one count per request line; the main pass counts the first file itself (the helper
starts meanwhile), any file the helper has not finished when the main pass reaches it (it never waits: on a
machine busy with other work the helper falls behind, measured 2.4 M rows at load ~2: the main pass waiting
made it no faster than counting alone), and any file whose helper count failed (a bad line then fails in the
main pass, with its usual message). Counts are the same either way; only who computes them changes.
"""

from __future__ import annotations

import multiprocessing
import os
from array import array
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from coldbatch.estimate import prices as P
from coldbatch.protocol import limits as L

#: below this many bytes of request files, starting a helper (~1.5 s of imports and table load) does not pay
MIN_BYTES = 32 * 2**20
MIN_FILES = 3
#: files handed to the helper beyond the one the main pass reads: each holds ~2 MB of counts and keys until the
#: main pass reaches it (with every file queued at once, a helper far ahead held ~100 MB at 2.4 M rows)
AHEAD = 2


#: per request line of a file: prompt tokens, and the request keys (all the same length) joined
Counted = tuple["array[int]", bytes]


def _count_file(path: str, table: P.PriceTable | None) -> Counted:
    """Prompt tokens and request keys of each request line of one file, in order (runs in the helper): the
    tokens as `Accumulator.flush` counts them, a chunk of lines per tokenizer call."""
    from coldbatch.core.canonical import request_key
    from coldbatch.estimate import tokens as T
    from coldbatch.estimate.accounting import prompt_texts
    from coldbatch.estimate.api import CHUNK, request_lines

    table = table or P.load()
    counts: array[int] = array("q")
    keys: list[str] = []
    chunk: list[tuple[int, list[str], str]] = []  # overhead, texts, encoding
    for _, line in request_lines([Path(path)]):
        req = orjson.loads(line)
        body, url = req["body"], str(req.get("url", L.CHAT))
        texts, overhead = prompt_texts(body, url)
        price = table.lookup(str(body.get("model", "?")))
        chunk.append((overhead, texts, price.encoding if price else "o200k_base"))
        keys.append(request_key(url, body))
        if len(chunk) >= CHUNK:
            counts.extend(_prompts(chunk, T.counter))
            chunk = []
    counts.extend(_prompts(chunk, T.counter))
    return counts, "".join(keys).encode()


def _prompts(chunk: list[tuple[int, list[str], str]], counter: Any) -> list[int]:
    """Each request's overhead plus its texts' tokens, one tokenizer call per encoding."""
    out = [overhead for overhead, _, _ in chunk]
    for enc in {e for _, _, e in chunk}:
        idxs = [i for i, (_, _, e) in enumerate(chunk) if e == enc]
        flat = [t for i in idxs for t in chunk[i][1]]
        tokens = iter(counter(enc, texts=len(flat)).count_many(flat))
        for i in idxs:
            out[i] += sum(next(tokens) for _ in chunk[i][1])
    return out


def _worth_it(paths: list[Path]) -> bool:
    if len(paths) < MIN_FILES or (os.cpu_count() or 1) < 2:
        return False
    return sum(p.stat().st_size for p in paths if p.is_file()) >= MIN_BYTES


def counted_lines(
    paths: list[Path], table: P.PriceTable | None, *, wait: bool = False
) -> Iterator[tuple[str, bytes, int | None, str | None]]:
    """(where, line, prompt tokens, request key) of every request line of `paths`, as `api.request_lines` gives
    them; None, None where the caller computes them itself (small jobs, the first file, a file the helper failed
    on; with `wait`, every file but the first is the helper's unless it failed)."""
    from coldbatch.estimate.api import request_lines
    from coldbatch.validation import expand_paths

    files = expand_paths(list(paths))
    if not _worth_it(files):
        yield from ((where, line, None, None) for where, line in request_lines(files))
        return
    # spawn, not fork: the caller may run threads (an event loop, a thread pool), which fork would copy mid-use
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        ahead: dict[int, Future[Counted]] = {}
        for i in range(1, min(AHEAD + 1, len(files))):
            ahead[i] = pool.submit(_count_file, str(files[i]), table)
        for i, path in enumerate(files):
            if i + AHEAD + 1 < len(files):
                ahead[i + AHEAD + 1] = pool.submit(_count_file, str(files[i + AHEAD + 1]), table)
            done = _result(ahead.pop(i, None), wait)  # a file the helper has not finished is counted here
            lines = request_lines([path])
            if done is None:
                yield from ((where, line, None, None) for where, line in lines)
                continue
            counts, keys = done
            width = len(keys) // len(counts) if counts else 0
            if len(keys) != width * len(counts):  # request keys are all one length; anything else is a bug
                raise AssertionError(f"{path}: request keys of uneven length from the counting helper")
            for j, ((where, line), n) in enumerate(zip(lines, counts, strict=True)):
                yield where, line, n, keys[j * width : (j + 1) * width].decode()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _result(future: Future[Counted] | None, wait: bool) -> Counted | None:
    """The helper's counts for a file, or None (the main pass counts it): not handed over, not finished yet, or the
    helper failed."""
    if future is None:
        return None
    if not wait and not future.done():  # the helper is behind (a busy machine): waiting idles the critical pass
        future.cancel()
        return None
    try:
        return future.result()
    except Exception:  # a bad line (the main pass reports it) or a broken helper: count here instead
        return None
