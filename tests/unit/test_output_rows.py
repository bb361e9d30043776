"""The small-input OUTPUT writer (runner/output_rows.py) writes the bytes the columnar writers write.

Property tests: random tables with awkward text (quotes, separators, newlines, spaces, empty vs missing),
integers and floats, written by `output._Writer` (pyarrow's CSV writer, the JSONL writer) and by the
stdlib `_RowWriter`, must be the same file. The whole join is compared on real jobs in
tests/acceptance/test_small_output.py."""

from __future__ import annotations

import base64
import csv
import io
import struct
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldbatch.builder import small
from coldbatch.builder.spec import RequestSpec
from coldbatch.runner import output, output_rows, vectors
from coldbatch.runner.columns import column
from coldbatch.runner.ledger import Ledger
from coldbatch.store.records import Outcome

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


# -- the whole join, on a ledger: every kind of added column -----------------------------------------------------
TEXTS = ["good", "", 'say "hi", then\nleave', "  padded  ", "later", "naïve 😀", "never sent"]


def _job(tmp_path: Path, spec: RequestSpec, outcomes: list[Outcome]) -> tuple[Ledger, Path]:
    inp = tmp_path / "in.csv"
    with inp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "note"])
        w.writerows([f"k{i}", t, f"n{i}" if i % 2 else ""] for i, t in enumerate(TEXTS, 1))
    lg = Ledger(tmp_path / "ledger.sqlite3")
    lg.create_job("j", str(inp), str(tmp_path / "out.csv"), {})
    unit = {"round": 1, "shard": 1, "path": "/x", "requests": 5, "bytes": 1, "sha256": "0" * 64, "model": "m"}
    lg.add_units("j", [unit])
    lg.collect(lg.units("j")[0], outcomes)
    return lg, inp


def _vector_b64(v: list[float]) -> str:
    return orjson.dumps(base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()).decode()


LABELS = ("positive", "neutral", "negative")
SCHEMA = {"type": "object", "properties": {"reason": {"type": "string"}, "score": {"type": "integer"}}}
JOBS = {
    "labels": (
        RequestSpec(model="m", prompt="Say {text}", id_column="id", labels=LABELS),
        [
            Outcome("k1", "ok", '{"label": "positive"}', prompt_tokens=9, completion_tokens=4, confidence=0.8123),
            Outcome("k3", "failed", None, "invalid_request", 'no, "really"'),
            Outcome("k4", "retry", None, "engine_error", "boom"),
            Outcome("k5", "ok", "neutral", confidence=1e-7),
            Outcome("k6", "ok", "not json: neutral", confidence=1.0),
        ],
    ),
    "schema": (
        RequestSpec(model="m", prompt="Say {text}", id_column="id", schema=SCHEMA),
        [
            Outcome("k1", "ok", '{"reason": "a, \\"b\\"", "score": 3}'),
            Outcome("k3", "failed", '{"reason": 1}', "invalid_output", "does not match"),
            Outcome("k4", "ok", '{"reason": {"nested": [1, 2.5]}, "score": null}'),
            Outcome("k6", "ok", "[]"),
        ],
    ),
    "embeddings": (
        RequestSpec(model="m", endpoint="/v1/embeddings", input_column="text", id_column="id"),
        [
            Outcome("k1", "ok", "[0.1, -2, 3e-8, 1]"),
            Outcome("k3", "ok", _vector_b64([0.5, -1.25, 3.4028234663852886e38])),
            Outcome("k4", "ok", "[[1, 2], [3, 4]]"),  # several inputs in one request: no vector
            Outcome("k5", "failed", None, "engine_error", "down"),
        ],
    ),
}


@pytest.mark.parametrize("job", sorted(JOBS))
@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("prefix", ["", "cb_"])
def test_the_joined_file_is_the_columnar_writers_file(tmp_path: Path, job: str, kind: str, prefix: str) -> None:
    """Labels with confidences (tiny, exactly 1), schema properties (nested ones as JSON text), vectors (JSON
    and base64; JSONL gets arrays), rejected, failed, retried and never-answered rows, with and without a prefix."""
    spec, outcomes = JOBS[job]
    lg, inp = _job(tmp_path, spec, outcomes)
    a, b = tmp_path / f"a.{kind}", tmp_path / f"b.{kind}"
    counts = output.write_output(lg, "j", inp, a, spec, prefix=prefix)
    assert output_rows.write_output_rows(lg, "j", inp, b, spec, prefix=prefix) == counts
    assert counts["rejected"] == 1 and counts["rows"] == len(TEXTS)
    assert b.read_bytes() == a.read_bytes()


def test_an_input_the_stdlib_builder_leaves_alone_is_written_by_the_columnar_path(tmp_path: Path) -> None:
    """Over one read batch of rows with repeated ids renamed (`--on-duplicate-id suffix`): `builder.small`
    declines (names could depend on Arrow's batching), so the one dispatch writes it the columnar way."""
    spec = RequestSpec(model="m", prompt="{text}", id_column="id", on_duplicate_id="suffix")
    inp = tmp_path / "in.csv"
    n = small.ONE_BATCH_ROWS + 10
    inp.write_text("id,text\n" + "".join(f"{i % 5000},t{i}\n" for i in range(n)))
    lg = Ledger(tmp_path / "ledger.sqlite3")
    lg.create_job("j", str(inp), str(tmp_path / "out.csv"), {})
    assert output_rows.takes_small_path(inp, tmp_path / "o.csv", None, False)
    assert output_rows.write_output_rows(lg, "j", inp, tmp_path / "rows.csv", spec) is None
    assert not (tmp_path / "rows.csv").exists()
    assert output_rows.write_output(lg, "j", inp, tmp_path / "o.csv", spec)["rows"] == n
    output.write_output(lg, "j", inp, tmp_path / "columnar.csv", spec)
    assert (tmp_path / "o.csv").read_bytes() == (tmp_path / "columnar.csv").read_bytes()


INPUTS = {  # file name, bytes, --format: what the readers make of awkward files
    "bom-and-bad-utf8": ("in.csv", b'\xef\xbb\xbfid,text\r\nk1,caf\xe9\r\nk2,"a\xff""b"\r\n\r\nk3, x \r\n', None),
    "tsv-quotes-are-text": ("in.tsv", b'id\ttext\nk1\t"quoted" text\nk2\ta "b\n', None),
    "jsonl-values": (
        "in.jsonl",
        b'{"id": "k1", "text": "t", "n": 1.0, "o": {"a": [1, null]}}\n\n'
        b'{"id": "k2", "text": null, "n": 10000000000000000000, "o": true}\n{"id": "k3", "text": "x"}\n',
        None,
    ),
    "headerless": ("in.txt", b"k1,hello\nk2,\nk3,world\n", "csv:id,text"),
}


@pytest.mark.parametrize("case", sorted(INPUTS))
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_awkward_input_files_join_to_the_columnar_writers_file(tmp_path: Path, case: str, kind: str) -> None:
    """A byte order mark, bytes that are not UTF-8, CRLF and blank lines, TSV quotes, JSON numbers, objects and
    nulls, a file without a header line: the input's cells reach OUTPUT exactly as the columnar reader reads them."""
    name, data, fmt = INPUTS[case]
    inp = tmp_path / name
    inp.write_bytes(data)
    spec = RequestSpec(model="m", prompt="Say {text}", id_column="id")
    lg = Ledger(tmp_path / "ledger.sqlite3")
    lg.create_job("j", str(inp), str(tmp_path / "out.csv"), {})
    unit = {"round": 1, "shard": 1, "path": "/x", "requests": 1, "bytes": 1, "sha256": "0" * 64, "model": "m"}
    lg.add_units("j", [unit])
    lg.collect(lg.units("j")[0], [Outcome("k1", "ok", "an answer", prompt_tokens=3, completion_tokens=2)])
    a, b = tmp_path / f"a.{kind}", tmp_path / f"b.{kind}"
    assert output_rows.takes_small_path(inp, b, fmt, False)
    counts = output.write_output(lg, "j", inp, a, spec, fmt=fmt)
    assert output_rows.write_output_rows(lg, "j", inp, b, spec, fmt=fmt) == counts
    assert counts["succeeded"] == 1
    assert b.read_bytes() == a.read_bytes()
