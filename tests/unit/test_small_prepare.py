"""The small-input prepare (stdlib: csv module + orjson) writes byte for byte what the columnar one (polars/pyarrow)
writes, and fails with the same message; `coldbatch prepare` of a small CSV loads neither polars, pyarrow nor
numpy; the one shard rule gives the same cuts line by line as batch by batch (issue 11, client weight)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldbatch.builder import api
from coldbatch.builder.spec import RequestSpec
from coldbatch.builder.write import LineShards, ShardWriter
from coldbatch.core.shard import ShardPlanner
from coldbatch.errors import ColdbatchError, LineTooLarge
from coldbatch.protocol.limits import Limits

TWEETS = Path(__file__).resolve().parents[3] / "shared" / "data" / "airline-tweets" / "Tweets.csv"
CHAT = RequestSpec(model="gpt-4o-mini", prompt="Tweet to {airline}: {text}")


def _outcome(src: Path, out: Path, spec: RequestSpec, reader: str, **kw: Any) -> Any:
    """The files `prepare` wrote (name -> bytes), or the error it raised (type and message)."""
    try:
        api.prepare(src, out, spec, reader=reader, **kw)  # type: ignore[arg-type]
    except (ColdbatchError, ValueError) as exc:
        return type(exc).__name__, str(exc)
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def same_both_ways(
    tmp: Path, src: Path, spec: RequestSpec, *, small: bool = True, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> Any:
    """Prepare `src` both ways; assert the results are identical and return them. `small`: the stdlib path
    must do it itself (it hands nothing over to the columnar path)."""
    if small:
        monkeypatch.setattr(api, "_build_all", _columnar_must_not_run)
    a = _outcome(src, tmp / "stdlib", spec, "stdlib", **kw)
    monkeypatch.undo()
    b = _outcome(src, tmp / "columnar", spec, "columnar", **kw)
    assert a == b
    return a


def _columnar_must_not_run(*_: Any) -> None:
    raise AssertionError("the stdlib path handed this input over to the columnar path")


def _lines(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [json.loads(x) for k, v in files.items() if k.startswith("shard-") for x in v.splitlines()]


# -- real data ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not TWEETS.is_file(), reason="needs ../shared/data/airline-tweets")
@pytest.mark.parametrize("lines", [1001, None])
def test_the_tweets_give_identical_shards_and_manifest(tmp_path: Path, lines: int | None, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = TWEETS
    if lines is not None:
        src = tmp_path / "t.csv"
        src.write_bytes(b"".join(TWEETS.read_bytes().splitlines(keepends=True)[:lines]))
    # the whole file repeats 155 tweet ids: the same error both ways, and with "suffix" the same renames
    both = {
        "model": "gpt-4o-mini",
        "prompt": "Tweet to {airline}: {text}",
        "id_column": "tweet_id",
        "labels": ("a", "b"),
    }
    if lines is None:
        err = same_both_ways(tmp_path, src, RequestSpec(**both), monkeypatch=monkeypatch)  # type: ignore[arg-type]
        assert err[0] == "InputError" and "155 row(s) repeat an earlier id" in err[1]
    spec = RequestSpec(**both, on_duplicate_id="suffix")  # type: ignore[arg-type]
    files = same_both_ways(tmp_path, src, spec, monkeypatch=monkeypatch, limits=Limits(max_requests=4000))
    manifest = json.loads(files["manifest.json"])
    assert manifest["totals"]["rows"] == (980 if lines else 14640)
    assert len([k for k in files if k.startswith("shard-")]) == manifest["totals"]["shards"] == (1 if lines else 4)
    assert _lines(files)[0]["custom_id"] == "570306133677760513"


# -- CSV, TSV, JSONL corner cases ---------------------------------------------------------------------------------
CSV_CASES = {
    "quotes, newlines, unicode": 'id,airline,text\r\n1,"Uni, ted","say ""hi""\nnext line"\r\n2,é,😀 \u2028 \x7f\r\n',
    "bom and empty fields": "\ufeffid,airline,text\n1,,\n2, , \u3000\n3,,\x1c\n4,a,\n,b,x\n",
    "no newline at the end, bare CR": 'id,airline,text\r1,a,"x\ry"\r2,b,tail',
    "blank lines are skipped": "id,airline,text\n\n1,a,x\n\n\n2,b,y\n",
}


@pytest.mark.parametrize("case", CSV_CASES)
@pytest.mark.parametrize("with_id", [True, False])
def test_csv_corner_cases(tmp_path: Path, case: str, with_id: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.csv"
    src.write_bytes(CSV_CASES[case].encode())
    spec = RequestSpec(model="m", prompt="Tweet to {airline}: {text}", id_column="id" if with_id else None)
    same_both_ways(tmp_path, src, spec, monkeypatch=monkeypatch)


def test_rejects_invalid_utf8_and_long_rows_match(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.csv"
    src.write_bytes(b"id,airline,text\n1,a\xff\xfeb,ok\n2,b," + b"x" * 3000 + b"\n3,c,\xc3\n4,,\n")
    files = same_both_ways(tmp_path, src, CHAT, monkeypatch=monkeypatch, limits=Limits(max_line_bytes=1000))
    rejects = [json.loads(x) for x in files["rejects.jsonl"].splitlines()]
    assert [(r["line"], r["code"]) for r in rejects] == [(2, "line_too_large"), (4, "empty_input")]
    assert len(json.loads(files["manifest.json"])["repaired_cells"]) == 2


def test_small_limits_cut_the_same_shards(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "".join(f"row {i} {'x' * (i % 37)}\n" for i in range(300)))
    spec = RequestSpec(model="m", input_column="text")
    files = same_both_ways(tmp_path, src, spec, monkeypatch=monkeypatch, limits=Limits(max_requests=7, max_bytes=900))
    assert len(files) > 40


def test_tsv_quotes_are_text_and_headerless_columns(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.tsv"
    src.write_bytes(b'He said "no\t1\n"open quote\t0\r\nplain\t1\n')
    spec = RequestSpec(model="m", prompt="{sentence} ({label})")
    files = same_both_ways(tmp_path, src, spec, monkeypatch=monkeypatch, fmt="tsv:sentence,label")
    assert _lines(files)[1]["body"]["messages"][0]["content"] == '"open quote (0)'
    same_both_ways(tmp_path, src, RequestSpec(model="m", prompt="{column1}"), monkeypatch=monkeypatch, fmt="tsv:")


def test_jsonl_values_nulls_bom_and_repairs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.jsonl"
    rows = [
        b'\xef\xbb\xbf{"id": "a", "text": "caf\xc3\xa9", "n": 1.50, "tags": ["x", {"y": null}]}',
        b"",
        b'{"id": null, "text": "no id", "n": 2}',
        b'{"id": "b", "text": null, "n": true}',
        b'{"id": "c", "text": "bad \xff byte", "n": 1e10}',
        b'{"text": "   ", "id": "d"}',
    ]
    src.write_bytes(b"\n".join(rows) + b"\n")
    spec = RequestSpec(model="m", prompt="{text} {n} {tags}", id_column="id")
    files = same_both_ways(tmp_path, src, spec, monkeypatch=monkeypatch)
    assert json.loads(files["manifest.json"])["totals"]["rejected"] == 2


def test_repeated_ids_error_and_suffix(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "in.csv"
    src.write_text("id,text\na,1\na,2\na~2,3\nb,4\na,5\nb,6\n")
    err = same_both_ways(
        tmp_path, src, RequestSpec(model="m", input_column="text", id_column="id"), monkeypatch=monkeypatch
    )
    assert err[0] == "InputError" and "row 2: id 'a' repeats row 1" in err[1]
    spec = RequestSpec(model="m", input_column="text", id_column="id", on_duplicate_id="suffix")
    files = same_both_ways(tmp_path, src, spec, monkeypatch=monkeypatch)
    assert [x["custom_id"] for x in _lines(files)] == ["a", "a~3", "a~2", "b", "a~4", "b~2"]


# -- bad input: the same error, naming file, line and field ------------------------------------------------------
BAD = {
    "unclosed quote": ("in.csv", b'id,text\n1,"fine"\n2,"never closed\nmore\n', None),
    "unclosed quote mid-row": ("in.csv", b'id,text\n1,"x\n2,y\n', None),
    "too few columns": ("in.csv", b"id,text\n1,a\n2\n3,c\n", None),
    "too many columns": ("in.csv", b"id,text\n1,a\n2,b,c\n", None),
    "tsv column count": ("in.tsv", b'id\ttext\n1\t"a\n2\tb\tc\n', None),
    "--columns count": ("in.csv", b"1,a,b\n", "csv:id,text"),
    "empty file": ("in.csv", b"", None),
    "repeated header": ("in.csv", b"id,text,id\n1,a,2\n", None),
    "missing column": ("in.csv", b"id,body\n1,a\n", None),
    "jsonl not json": ("in.jsonl", b'{"id": "1", "text": "a"}\n{"id": 2,\n', None),
    "jsonl unknown field": ("in.jsonl", b'{"id": "1", "text": "a"}\n{"id": "2", "txt": "b"}\n', None),
    "jsonl not an object": ("in.jsonl", b'{"id": "1", "text": "a"}\n[1]\n', None),
    "headerless jsonl": ("in.jsonl", b'{"id": "1", "text": "a"}\n', "jsonl:"),
    "headerless repeated ids": ("in.csv", b"a,x\na,y\nb,z\n", "csv:id,text"),  # the columnar re-read kept the names
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_fails_with_the_same_message(tmp_path: Path, case: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    name, data, fmt = BAD[case]
    src = tmp_path / name
    src.write_bytes(data)
    spec = RequestSpec(model="m", input_column="text", id_column="id")
    err = same_both_ways(tmp_path, src, spec, monkeypatch=monkeypatch, fmt=fmt)
    assert isinstance(err, tuple), err
    assert str(src) in err[1]
    assert not (tmp_path / "stdlib").exists(), "a failed prepare leaves --out as it was"


# -- random small tables -------------------------------------------------------------------------------------
_CELL = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\té😀\x1c\u3000')), max_size=12)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(st.sampled_from(["x", "y", "", "x~2"]), _CELL, _CELL), max_size=25),
    kind=st.sampled_from(["csv", "tsv", "jsonl"]),
    with_id=st.booleans(),
    suffix=st.booleans(),
    max_requests=st.integers(1, 9),
)
def test_random_tables_prepare_identically(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, str, str]],
    kind: str,
    with_id: bool,
    suffix: bool,
    max_requests: int,
) -> None:
    tmp = tmp_path_factory.mktemp("t")
    src = tmp / f"in.{kind}"
    if kind == "jsonl":
        src.write_text("".join(json.dumps({"id": i, "a": a, "b": b}) + "\n" for i, a, b in rows) or "\n")
    elif kind == "tsv":
        clean = [[c.replace("\t", " ").replace("\n", " ").replace("\r", " ") for c in r] for r in rows]
        src.write_text("id\ta\tb\n" + "".join("\t".join(r) + "\n" for r in clean), newline="")
    else:
        import csv

        with src.open("w", newline="") as fh:
            w = csv.writer(fh, quoting=csv.QUOTE_ALL)  # minimal quoting leaves a bare CR unquoted (a row break)
            w.writerow(["id", "a", "b"])
            w.writerows(rows)
    spec = RequestSpec(
        model="m",
        prompt="<{a}|{b}>",
        id_column="id" if with_id else None,
        on_duplicate_id="suffix" if suffix else "error",
    )
    lim = Limits(max_requests=max_requests, max_bytes=400)
    with pytest.MonkeyPatch.context() as mp:
        same_both_ways(tmp, src, spec, monkeypatch=mp, limits=lim, fmt=None)


# -- the one shard rule ------------------------------------------------------------------------------------------
@settings(max_examples=150)
@given(
    batches=st.lists(
        st.tuples(st.lists(st.integers(1, 60), max_size=30), st.sampled_from(["a", "b"])), min_size=1, max_size=6
    ),
    max_requests=st.integers(1, 8),
    max_bytes=st.integers(1, 120),
)
def test_line_by_line_and_batch_by_batch_cut_the_same(
    batches: list[tuple[list[int], str]], max_requests: int, max_bytes: int
) -> None:
    one, many = ShardPlanner(max_requests, max_bytes), ShardPlanner(max_requests, max_bytes)
    for sizes, model in batches:
        try:
            want = [i for i, size in enumerate(sizes) if one.place(size, model)]
        except LineTooLarge as exc:
            with pytest.raises(LineTooLarge) as info:
                many.cuts(np.array(sizes, dtype=np.int64), model)
            assert info.value.index == exc.index
            return
        assert many.cuts(np.array(sizes, dtype=np.int64), model) == want


def test_line_shards_writes_what_the_batch_writer_writes(tmp_path: Path) -> None:
    import pyarrow as pa

    from coldbatch.builder.build import Built

    lines = [f'{{"n":{i},"pad":"{"x" * (i * 7 % 50)}"}}\n' for i in range(200)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    by_line = LineShards(tmp_path / "a", "shard-{:05d}.jsonl", 9, 700)
    for row, line in enumerate(lines, 1):
        by_line.add(line.encode(), "m" if row < 150 else "n", row)
    by_line.close()
    by_batch = ShardWriter(tmp_path / "b", ShardPlanner(9, 700))
    for lo, hi, model in ((0, 60, "m"), (60, 149, "m"), (149, 200, "n")):
        arr = pa.array(lines[lo:hi], pa.large_string())
        by_batch.add(Built(arr, np.arange(lo + 1, hi + 1, dtype=np.int64)), model)
    by_batch.close()
    assert [s.to_json() for s in by_line.shards] == [s.to_json() for s in by_batch.shards]
    for s in by_line.shards:
        assert (tmp_path / "a" / s.path).read_bytes() == (tmp_path / "b" / s.path).read_bytes()


# -- what a small prepare loads ---------------------------------------------------------------------------------
def test_prepare_of_a_small_csv_loads_no_columnar_library(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,"hello, world"\n2,bye\n')
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in ('polars', 'pyarrow', 'numpy') if m in sys.modules)))\n"
        "from coldbatch.cli import entry\n"
        f"sys.argv = ['coldbatch', 'prepare', {str(src)!r}, '-o', {str(tmp_path / 'out')!r}, '--model', 'm', "
        "'--prompt', 'Say {text}', '--id-column', 'id']\n"
        "entry()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLDBATCH_PREPARE_READER"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "shard-00001.jsonl").read_bytes().count(b"\n") == 2


def test_the_reader_is_chosen_by_size_and_format(tmp_path: Path) -> None:
    small, big, pq = tmp_path / "s.csv", tmp_path / "b.jsonl", tmp_path / "s.parquet"
    small.write_text("text\nx\n")
    with big.open("wb") as fh:
        fh.truncate((4 << 20) + 1)
    pq.write_bytes(b"PAR1")
    spec = RequestSpec(model="m", input_column="text")
    assert api.choose_reader(small, None, spec) == "stdlib"
    assert api.choose_reader(small, "tsv", spec) == "stdlib"
    assert api.choose_reader(big, None, spec) == "columnar"
    assert api.choose_reader(pq, None, spec) == "columnar"
    assert api.choose_reader(small, None, RequestSpec(model="m", prompt="no columns")) == "columnar"


@settings(max_examples=80)
@given(
    chunks=st.lists(st.lists(st.integers(0, 40), max_size=12), max_size=8),
    limit=st.integers(0, 30),
)
def test_dedup_keys_give_the_same_answers_before_and_after_moving_to_numpy(chunks: list[list[int]], limit: int) -> None:
    """`_SeenKeys` starts as a Python set (a small job loads no numpy) and moves to `_SeenHashes` past SET_KEYS."""
    from coldbatch.estimate.api import _SeenKeys

    keys = _SeenKeys()
    keys.SET_KEYS = limit  # type: ignore[misc]
    seen: set[int] = set()
    for chunk in chunks:
        texts = [f"k:{v * 0x9E3779B97F4A7C15 % (1 << 64):016x}rest" for v in chunk]
        want = []
        for i, v in enumerate(chunk):
            if v not in seen:
                seen.add(v)
                want.append(i)
        assert keys.firsts(texts) == want
