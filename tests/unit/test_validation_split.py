"""The server validates a large file in two halves on two workers: the verdict and every error must be those of
the one-piece pass, wherever the file is cut."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson
import pytest

from coldbatch.jsonl import iter_lines
from coldbatch.protocol import limits as L
from coldbatch.server import checking


def _line(cid: str, model: str = "gpt-4o-mini", text: str = "hello") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": L.CHAT, "body": body})


def _write(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as p:
        yield p


def _both(pool: ProcessPoolExecutor, path: str) -> tuple[checking.Checked, checking.Checked]:
    """(split result, one-piece result) of the same file."""
    args = (path, "in.jsonl", L.CHAT, None, 1000)
    split = asyncio.run(checking.check(pool, *args, split_bytes=0))
    return split, checking.check_file(*args)


def test_parts_cover_every_line_once_wherever_the_file_is_cut(tmp_path: Path) -> None:
    raw = b'{"a":1}\r\n\n  \n{"b":22}\n{"c":333}\r\nx\n\n{"last":"no newline"}\r'
    path = tmp_path / "f.jsonl"
    path.write_bytes(raw)
    whole = list(iter_lines(path))
    for cut in range(len(raw) + 1):
        parts = list(checking.part_lines(str(path), 0, cut)) + list(checking.part_lines(str(path), cut, len(raw)))
        assert parts == whole, cut


def test_a_clean_file_gives_the_one_piece_verdict(tmp_path: Path, pool: ProcessPoolExecutor) -> None:
    path = _write(tmp_path / "ok.jsonl", [_line(f"r-{i}", text="x" * (i % 7)) for i in range(300)])
    split, whole = _both(pool, path)
    assert split == whole
    assert split.ok and split.requests == 300 and split.model == "gpt-4o-mini"
    one_piece = asyncio.run(checking.check(pool, path, "in.jsonl", L.CHAT, None, 1000, split_bytes=0, halves=False))
    assert one_piece == whole  # (what the executor asks for while a batch runs)


@pytest.mark.parametrize(
    "broken",
    [
        {0: _line("r-299")},  # the same custom_id at the start and at the end: one in each half
        {290: _line("r-290", model="gpt-4o")},  # a second model, only in the second half
        {250: b'{"custom_id": "r-250", "method": "POST"}'},  # missing url and body, in the second half
        {5: b"not json", 280: _line("r-280", text="")},  # errors in both halves
    ],
)
def test_a_broken_file_gets_the_one_piece_errors(
    tmp_path: Path, pool: ProcessPoolExecutor, broken: dict[int, bytes]
) -> None:
    lines = [broken.get(i, _line(f"r-{i}")) for i in range(300)]
    split, whole = _both(pool, _write(tmp_path / "bad.jsonl", lines))
    assert not split.ok
    assert split == whole  # the same errors, with the line numbers of the whole file
    assert all(e["line"] is None or e["line"] > 0 for e in split.errors)


def test_a_whole_file_rule_is_applied_to_the_sum_of_the_halves(tmp_path: Path, pool: ProcessPoolExecutor) -> None:
    lines = [_line(f"r-{i}") for i in range(L.Limits().max_requests + 1)]
    split, whole = _both(pool, _write(tmp_path / "many.jsonl", lines))
    assert [e["code"] for e in split.errors] == ["too_many_tasks"]
    assert split == whole
