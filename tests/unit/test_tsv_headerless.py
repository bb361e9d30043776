"""TSV and headerless files (issue 16, item 5): a TSV's quotes are text, a line is a row, no row is ever merged
with another silently, and a file without a header line can be named with `--columns` or `--no-header`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldbatch.cli import main
from coldbatch.dataset import csvfile, read
from coldbatch.errors import InputError, UsageError

# IMDB-style sentences: quotes open in one line and close in another, or never
SENTENCES = ['A "must see" film.', 'He said "wow', 'and it was bad"', '"', "plain", '""quoted twice""']


def rows_of(ds: read.Dataset) -> list[dict[str, str]]:
    return [r for _, b in ds.batches() for r in b.to_pylist()]


def _tsv(path: Path, rows: list[tuple[str, str]], header: bool = True) -> Path:
    lines = (["sentence\tlabel"] if header else []) + [f"{s}\t{label}" for s, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tsv_quotes_are_text_and_every_line_is_a_row(tmp_path: Path) -> None:
    rows = [(s, str(i % 2)) for i, s in enumerate(SENTENCES * 40)]
    got = rows_of(read.open_dataset(_tsv(tmp_path / "imdb.tsv", rows)))
    assert [(r["sentence"], r["label"]) for r in got] == rows


def test_tsv_rows_longer_than_a_block_keep_their_quotes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 1024)  # the Python path reads the long rows
    rows = [('"' + "x" * 3000, "1"), ('say "hi', "0"), ("y" * 2000 + '"', "1")]
    got = rows_of(read.open_dataset(_tsv(tmp_path / "long.tsv", rows)))
    assert [(r["sentence"], r["label"]) for r in got] == rows


@pytest.mark.parametrize("bad", ["one field only", "three\tfields\there"])
def test_a_tsv_row_with_the_wrong_number_of_fields_is_refused_with_its_row(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text('sentence\tlabel\nfine "quote\t1\n' + bad + "\nlater\t0\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.tsv: malformed TSV: data row 2: Expected 2 columns"):
        rows_of(read.open_dataset(path))


_CELL = st.text(alphabet=st.sampled_from(list("ab ,\"'é😀\\")), max_size=30)


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_CELL.filter(str.strip), _CELL), min_size=1, max_size=20))
def test_any_tab_free_cells_read_back_as_written(tmp_path: Path, rows: list[tuple[str, str]]) -> None:
    got = rows_of(read.open_dataset(_tsv(tmp_path / "p.tsv", rows)))
    assert [(r["sentence"], r["label"]) for r in got] == rows


def test_headerless_files_are_named_by_columns_or_numbered(tmp_path: Path) -> None:
    path = _tsv(tmp_path / "noheader.tsv", [("first row", "1"), ('second "row', "0")], header=False)
    named = read.open_dataset(path, read.headerless_format(None, "text,label", False))
    assert named.columns == ["text", "label"]
    assert rows_of(named) == [{"text": "first row", "label": "1"}, {"text": 'second "row', "label": "0"}]
    numbered = read.open_dataset(path, read.headerless_format("tsv", None, True))
    assert numbered.columns == ["column1", "column2"] and len(rows_of(numbered)) == 2
    with pytest.raises(InputError, match=r"noheader\.tsv:1: --columns names 3 column\(s\), the first line has 2"):
        read.open_dataset(path, "tsv:a,b,c")
    with pytest.raises(UsageError, match="distinct, non-empty"):
        read.headerless_format(None, "a,a", False)
    with pytest.raises(UsageError, match="CSV and TSV files only"):
        read.open_dataset(_jsonl(tmp_path), "jsonl:a")


def _jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": "1"}\n', encoding="utf-8")
    return path


def test_prepare_reads_a_headerless_file_with_columns(tmp_path: Path) -> None:
    """Without --columns the first data row became the header; with it, every line is a request."""
    path = _tsv(tmp_path / "noheader.tsv", [(f'line {i} "q', str(i % 2)) for i in range(5)], header=False)
    runner = CliRunner()
    args = ["prepare", str(path), "--out", str(tmp_path / "shards"), "-m", "m", "-p", "Review: {text}"]
    res = runner.invoke(main, [*args, "--columns", "text,label"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "shards").glob("*.jsonl")
    bodies = [json.loads(x)["body"] for f in lines for x in f.read_text().splitlines()]
    assert [b["messages"][-1]["content"] for b in bodies] == [f'Review: line {i} "q' for i in range(5)]
    res = runner.invoke(main, [*args, "--no-header"])
    assert res.exit_code != 0 and "text" in res.output  # column1/column2: the template's {text} is not there
