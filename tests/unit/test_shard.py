"""core.shard.ShardPlanner and builder.write.ShardWriter: join(shard(x)) == x, limits hold, cuts repeat."""

from __future__ import annotations

import hashlib
import tempfile
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldbatch.builder.build import Built
from coldbatch.builder.write import ShardWriter
from coldbatch.core.shard import LineTooLarge, ShardPlanner


def plan(
    sizes: list[int], splits: list[int], max_requests: int, max_bytes: int, models: list[str] | None = None
) -> list[int]:
    """Global cut indices for `sizes` fed in batches ending at `splits` (one model per batch)."""
    planner = ShardPlanner(max_requests, max_bytes)
    cuts: list[int] = []
    bounds = [0, *sorted(set(splits) - {0, len(sizes)}), len(sizes)]
    for k, (lo, hi) in enumerate(pairwise(bounds)):
        model = models[k % len(models)] if models else "m"
        cuts += [lo + c for c in planner.cuts(np.array(sizes[lo:hi], dtype=np.int64), model)]
    return cuts


def shards_of(sizes: list[int], cuts: list[int]) -> list[list[int]]:
    bounds = [*cuts, len(sizes)]
    return [sizes[a:b] for a, b in pairwise(bounds)]


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[int], list[int], int, int]:
    sizes = draw(st.lists(st.integers(1, 60), max_size=80))
    max_requests = draw(st.integers(1, 12))
    max_bytes = draw(st.integers(max(sizes, default=1), 200))
    splits = draw(st.lists(st.integers(0, len(sizes)), max_size=6))
    return sizes, splits, max_requests, max_bytes


@settings(max_examples=200)
@given(workloads())
def test_shards_join_back_to_the_input_and_respect_both_limits(w: tuple[list[int], list[int], int, int]) -> None:
    sizes, splits, max_requests, max_bytes = w
    cuts = plan(sizes, splits, max_requests, max_bytes)
    if not sizes:
        assert cuts == []
        return
    assert cuts[0] == 0 and cuts == sorted(set(cuts))
    shards = shards_of(sizes, cuts)
    assert [x for s in shards for x in s] == sizes  # join(shard(x)) == x
    for s in shards:
        assert 1 <= len(s) <= max_requests
        assert sum(s) <= max_bytes


@settings(max_examples=200)
@given(workloads())
def test_cuts_are_greedy_and_do_not_depend_on_how_the_input_was_batched(
    w: tuple[list[int], list[int], int, int],
) -> None:
    sizes, splits, max_requests, max_bytes = w
    cuts = plan(sizes, splits, max_requests, max_bytes)
    assert cuts == plan(sizes, [], max_requests, max_bytes)  # same sizes, same cuts, whatever the batches
    shards = shards_of(sizes, cuts)
    for shard, nxt in pairwise(shards):  # a shard is only closed when the next line does not fit
        assert len(shard) == max_requests or sum(shard) + nxt[0] > max_bytes


def test_a_new_model_always_starts_a_new_shard() -> None:
    sizes = [10] * 6
    cuts = plan(sizes, [2, 3, 5], max_requests=100, max_bytes=1000, models=["a", "a", "b", "a"])
    assert cuts == [0, 3, 5]  # batches [0:2]a [2:3]a [3:5]b [5:6]a
    planner = ShardPlanner(100, 1000)
    planner.cuts(np.array([5], dtype=np.int64), "a")
    assert planner.cuts(np.array([5], dtype=np.int64), "a") == []
    assert planner.cuts(np.array([5], dtype=np.int64), "b") == [0]
    assert planner.shards == 2 and planner.model == "b"


def test_a_full_shard_at_a_batch_end_is_cut_at_the_next_batch() -> None:
    planner = ShardPlanner(max_requests=2, max_bytes=100)
    assert planner.cuts(np.array([1, 1], dtype=np.int64), "m") == [0]
    assert planner.cuts(np.array([1, 1, 1], dtype=np.int64), "m") == [0, 2]


def test_a_line_larger_than_a_shard_is_refused_with_its_global_index() -> None:
    planner = ShardPlanner(max_requests=10, max_bytes=50)
    planner.cuts(np.array([10, 10], dtype=np.int64), "m")
    with pytest.raises(LineTooLarge) as info:
        planner.cuts(np.array([10, 51], dtype=np.int64), "m")
    assert (info.value.index, info.value.size, info.value.limit) == (3, 51, 50)


@pytest.mark.parametrize(("max_requests", "max_bytes"), [(0, 10), (10, 0), (-1, -1)])
def test_limits_must_be_positive(max_requests: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ShardPlanner(max_requests, max_bytes)


def _built(lines: list[str], first_row: int) -> Built:
    arr = pa.array(lines, pa.large_string())
    return Built(arr, np.arange(first_row, first_row + len(lines), dtype=np.int64))


@settings(max_examples=60)
@given(
    st.lists(st.text(max_size=20).map(lambda s: s.replace("\n", " ") + "\n"), max_size=40),
    st.lists(st.integers(0, 40), max_size=4),
    st.integers(1, 7),
    st.integers(0, 60),
)
def test_written_shards_concatenate_to_the_input_and_their_info_is_true(
    lines: list[str], splits: list[int], max_requests: int, slack: int
) -> None:
    max_bytes = max((len(x.encode()) for x in lines), default=1) + slack
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        writer = ShardWriter(folder, ShardPlanner(max_requests, max_bytes))
        bounds = [0, *sorted({s for s in splits if 0 < s < len(lines)}), len(lines)]
        for lo, hi in pairwise(bounds):
            writer.add(_built(lines[lo:hi], lo + 1), "m")
        writer.close()
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == [s.path for s in writer.shards]
        blobs = [f.read_bytes() for f in files]
    assert b"".join(blobs) == "".join(lines).encode()
    row = 1
    for info, blob in zip(writer.shards, blobs, strict=True):
        assert info.bytes == len(blob) <= max_bytes
        assert info.requests == blob.count(b"\n") <= max_requests
        assert info.sha256 == hashlib.sha256(blob).hexdigest()
        assert (info.first_row, info.last_row) == (row, row + info.requests - 1)
        row += info.requests


def test_writer_handles_a_sliced_arrow_array(tmp_path: Path) -> None:
    arr = pa.array(["skip\n", "a\n", "bb\n", "ccc\n"], pa.large_string()).slice(1)
    writer = ShardWriter(tmp_path, ShardPlanner(2, 100))
    writer.add(Built(arr, np.array([2, 3, 4], dtype=np.int64)), "m")
    writer.close()
    assert (tmp_path / "shard-00001.jsonl").read_bytes() == b"a\nbb\n"
    assert (tmp_path / "shard-00002.jsonl").read_bytes() == b"ccc\n"
    assert [(s.first_row, s.last_row) for s in writer.shards] == [(2, 3), (4, 4)]
