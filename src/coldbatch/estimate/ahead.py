"""Prompt tokens of request files counted in a helper process, ahead of the pass that estimates and plans.

Counting tokens (parse, prompt texts, tiktoken) is a third of the 2.4 M-row send-plan pass, and while a job
prepares nothing else runs: the server waits for uploads, and the second core is idle. So for a large job a
helper process counts the files the main pass has not reached yet, with the very `Accumulator` rules the main
pass uses, and hands back one count per request line; the main pass counts the first file itself (the helper
starts meanwhile) and any file whose helper count failed (a bad line then fails in the main pass, with its
usual message). Counts are the same either way; only who computes them changes.
"""

from __future__ import annotations

import multiprocessing
import os
from array import array
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from coldbatch.estimate import prices as P

#: below this many bytes of request files, starting a helper (~1.5 s of imports and table load) does not pay
MIN_BYTES = 32 * 2**20
MIN_FILES = 3


def _count_file(path: str, table: P.PriceTable | None) -> array[int]:
    """Prompt tokens of each request line of one file, in order (runs in the helper)."""
    from coldbatch.estimate.api import Accumulator, request_lines

    counts: array[int] = array("q")
    acc = Accumulator(table or P.load(), None)
    acc.sink = lambda pending, fate, prompts, hits: counts.extend(prompts)
    for where, line in request_lines([Path(path)]):
        acc.add(where, line)
    acc.flush()
    return counts


def _worth_it(paths: list[Path]) -> bool:
    if len(paths) < MIN_FILES or (os.cpu_count() or 1) < 2:
        return False
    return sum(p.stat().st_size for p in paths if p.is_file()) >= MIN_BYTES


def counted_lines(paths: list[Path], table: P.PriceTable | None) -> Iterator[tuple[str, bytes, int | None]]:
    """(where, line, prompt tokens or None) of every request line of `paths`, as `api.request_lines` gives them;
    None where the caller counts itself (small jobs, the first file, a file the helper failed on)."""
    from coldbatch.estimate.api import request_lines
    from coldbatch.validation import expand_paths

    files = expand_paths(list(paths))
    if not _worth_it(files):
        yield from ((where, line, None) for where, line in request_lines(files))
        return
    # spawn, not fork: the caller may run threads (an event loop, a thread pool), which fork would copy mid-use
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        ahead: list[Future[array[int]] | None] = [None] + [pool.submit(_count_file, str(p), table) for p in files[1:]]
        for path, future in zip(files, ahead, strict=True):
            counts = _result(future)
            lines = request_lines([path])
            if counts is None:
                yield from ((where, line, None) for where, line in lines)
                continue
            for (where, line), n in zip(lines, counts, strict=True):
                yield where, line, n
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _result(future: Future[array[int]] | None) -> array[int] | None:
    """The helper's counts for a file, or None (the main pass counts it): not handed over, or the helper failed."""
    if future is None:
        return None
    try:
        return future.result()
    except Exception:  # a bad line (the main pass reports it) or a broken helper: count here instead
        return None
