"""The small-input OUTPUT writer (runner/output_rows.py) writes the bytes the columnar writers write.

Property tests: random tables with awkward text (quotes, separators, newlines, spaces, empty vs missing),
integers and floats, written by `output._Writer` (pyarrow's CSV writer, the JSONL writer) and by the
stdlib `_RowWriter`, must be the same file. The whole join is compared on real jobs in
tests/acceptance/test_small_output.py."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldbatch.runner import output, output_rows, vectors
from coldbatch.runner.columns import column

AWKWARD = st.text(
    alphabet=st.sampled_from(['"', ",", "\t", "\n", "\r", " ", "a", "é", "😀", "\\", "'", ";", "\x00", "y"]),
    max_size=8,
)
CELLS = st.one_of(st.none(), AWKWARD, st.text(max_size=6))
FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))
INTS = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))


def _pyarrow_floats(xs: list[float]) -> list[str]:
    buf = io.BytesIO()
    pacsv.write_csv(pa.table({"x": pa.array(xs, pa.float64())}), buf)
    return buf.getvalue().decode().split("\n")[1:-1]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_floats_are_spelled_as_pyarrows_csv_writer_spells_them(xs: list[float]) -> None:
    assert [output_rows.arrow_float(x) for x in xs] == _pyarrow_floats(xs)


def test_float_spelling_at_the_edges_of_plain_decimals() -> None:
    xs = [10.0**k for k in range(-9, 12)] + [1.5e-7, 1.5e-6, 0.0, -0.0, 1.0, 0.1 + 0.2, 5e-324, 1.7976931348623157e308]
    assert [output_rows.arrow_float(x) for x in xs] == _pyarrow_floats(xs)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[str], list[list[object]]]:
    """(column names, each column's kind, rows): a few text columns, then an int and a float column."""
    n_text = draw(st.integers(1, 4))
    names = draw(st.lists(AWKWARD.filter(bool), min_size=n_text + 2, max_size=n_text + 2, unique=True))
    kinds = ["text"] * n_text + ["int", "float"]
    cell = {"text": CELLS, "int": INTS, "float": FLOATS}
    rows = draw(st.lists(st.tuples(*(cell[k] for k in kinds)).map(list), max_size=12))
    return names, kinds, rows


TYPES = {"text": pa.string(), "int": pa.int64(), "float": pa.float64()}
SPELL = {"text": output_rows._text, "int": output_rows._number, "float": output_rows._float}


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables(), kind=st.sampled_from(["csv", "tsv", "jsonl"]), cut=st.integers(0, 12))
def test_the_row_writer_writes_the_columnar_writers_bytes(
    tmp_path: Path, table: tuple[list[str], list[str], list[list[object]]], kind: str, cut: int
) -> None:
    """Written in two pieces (the join hands on batches): the header once, rows in order."""
    names, kinds, rows = table
    a, b = tmp_path / f"a.{kind}", tmp_path / f"b.{kind}"
    columnar = output._Writer(a, kind)
    mine = output_rows._RowWriter(b, kind, names, [SPELL[k] for k in kinds])
    for part in (rows[:cut], rows[cut:]):
        if part:  # the columnar join never writes an empty batch (the reader skips them)
            cols = [column([r[i] for r in part], TYPES[k]) for i, k in enumerate(kinds)]
            columnar.write(pa.Table.from_arrays(cols, names=names))
        mine.write(part)
    columnar.close()
    mine.close(True)
    assert b.read_bytes() == a.read_bytes()


def test_an_unfinished_file_is_removed_and_output_left_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("the previous OUTPUT\n")
    w = output_rows._RowWriter(out, "csv", ["a"], [output_rows._text])
    w.write([["x"]])
    w.close(False)
    assert out.read_text() == "the previous OUTPUT\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


VECTOR = st.one_of(
    st.none(),
    st.lists(st.one_of(st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False)), max_size=6),
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=6).map(
        lambda v: base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
    ),
    st.just({"not": "a vector"}),
)


@given(st.lists(VECTOR, min_size=1, max_size=5))
def test_vectors_in_jsonl_are_the_columnar_columns_values(answers: list[object]) -> None:
    """An embeddings answer (a JSON array, or base64 float32s) becomes the same JSON array either way."""
    contents = [None if a is None else orjson.dumps(a).decode() for a in answers]
    want = vectors.embedding_column(contents, "jsonl").to_pylist()
    got = [None if (v := vectors.vector(c)) is None else [float(x) for x in v] for c in contents]
    assert orjson.dumps(got) == orjson.dumps(want)


@pytest.mark.parametrize(
    ("name", "fmt", "out", "classified", "small"),
    [
        ("in.csv", None, "o.csv", False, True),
        ("in.tsv", None, "o.jsonl", False, True),
        ("in.jsonl", None, "o.tsv", False, True),
        ("in.txt", "csv:a,b", "o.csv", False, True),
        ("in.csv", None, "o.parquet", False, False),  # Parquet OUTPUT: the columnar writer
        ("in.parquet", None, "o.csv", False, False),
        ("in.csv", None, "o.csv", True, False),  # --examples: the classifier is numpy anyway
    ],
)
def test_which_writer_a_job_takes(
    tmp_path: Path, name: str, fmt: str | None, out: str, classified: bool, small: bool
) -> None:
    (tmp_path / name).write_text("a,b\n1,2\n")
    assert output_rows.takes_small_path(tmp_path / name, tmp_path / out, fmt, classified) is small


def test_a_large_input_takes_the_columnar_writer(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with big.open("wb") as fh:
        fh.truncate(output_rows._alloc.SMALL_INPUT_BYTES + 1)  # sparse: nothing written
    assert not output_rows.takes_small_path(big, tmp_path / "o.csv", None, False)
