"""Prompt tokens counted ahead in a helper process equal the main pass's own counts, and a file the helper
cannot count is counted by the main pass, which reports its bad line as before."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from coldbatch.core.canonical import request_key
from coldbatch.errors import InputError
from coldbatch.estimate import ahead
from coldbatch.estimate import prices as P
from coldbatch.estimate.api import Accumulator, request_lines


def _files(tmp_path: Path, n: int = 4, rows: int = 300) -> list[Path]:
    paths = []
    for f in range(n):
        lines = []
        for i in range(rows):
            text = f"Row {f}-{i}: the headphones {'broke' if i % 3 else 'are great'} après {i * 7} days 🎧"
            req = {
                "custom_id": f"r-{f}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "system", "content": "Label it."}, {"role": "user", "content": text}],
                    "max_tokens": 5,
                },
            }
            lines.append(orjson.dumps(req))
        p = tmp_path / f"shard-{f:05d}.jsonl"
        p.write_bytes(b"\n".join(lines) + b"\n\n")
        paths.append(p)
    return paths


def _own_counts(paths: list[Path]) -> list[int]:
    counts: list[int] = []
    acc = Accumulator(P.load(), None)
    acc.sink = lambda pending, fate, prompts, hits: counts.extend(prompts)
    for where, line in request_lines(paths):
        acc.add(where, line)
    acc.flush()
    return counts


def test_helper_counts_equal_the_main_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _files(tmp_path)
    monkeypatch.setattr(ahead, "MIN_BYTES", 0)  # these files are small; count them ahead all the same
    got = list(ahead.counted_lines(paths, P.load(), wait=True))
    assert [(w, ln) for w, ln, _, _ in got] == list(request_lines(paths))
    assert all(n is None and k is None for _, _, n, k in got[:300])  # the first file: the main pass counts it
    assert all(n is not None for _, _, n, _ in got[300:])
    own = _own_counts(paths)
    assert [n for _, _, n, _ in got[300:]] == own[300:]
    for _, line, _, key in got[300:]:
        req = orjson.loads(line)
        assert key == request_key(req["url"], req["body"])
    acc = Accumulator(P.load(), None, dedup=True)
    for where, line, n, key in got:
        acc.add(where, line, n, key)
    est = acc.finish().totals
    assert est["input_tokens"] == sum(own)
    assert est["distinct_requests"] == 1200


def test_a_bad_line_is_reported_by_the_main_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _files(tmp_path)
    with paths[2].open("ab") as fh:
        fh.write(b'{"custom_id": "x", "body": 5}\n')
    monkeypatch.setattr(ahead, "MIN_BYTES", 0)
    acc = Accumulator(P.load(), None)
    with pytest.raises(InputError, match=r"shard-00002\.jsonl:302: not a batch request line"):
        for where, line, n, key in ahead.counted_lines(paths, P.load(), wait=True):
            acc.add(where, line, n, key)


def test_small_jobs_start_no_helper(tmp_path: Path) -> None:
    paths = _files(tmp_path, n=2, rows=10)
    assert all(n is None and k is None for _, _, n, k in ahead.counted_lines(paths, None))


def test_the_main_pass_never_waits_and_counts_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `wait`, whichever file the helper has not finished is counted by the caller: the same totals."""
    paths = _files(tmp_path, n=6)
    monkeypatch.setattr(ahead, "MIN_BYTES", 0)
    acc = Accumulator(P.load(), None, dedup=True)
    for where, line, n, key in ahead.counted_lines(paths, P.load()):
        acc.add(where, line, n, key)
    est = acc.finish().totals
    assert est["input_tokens"] == sum(_own_counts(paths))
    assert est["distinct_requests"] == 1800
