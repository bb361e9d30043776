"""dataset.read: every format streams as string columns; bad bytes are repaired and reported, not fatal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coldbatch.dataset import read
from coldbatch.errors import InputError, UsageError


def rows_of(ds: read.Dataset) -> list[dict[str, Any]]:
    return [r for _, b in ds.batches() for r in b.to_pylist()]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_csv_quotes_newlines_crlf_bom_and_empty_cells(tmp_path: Path) -> None:
    data = '\ufeffid,text\r\n570306133677760513,"say ""hi"", ok"\r\n2,"two\nlines\r\nhere"\r\n3,\r\n4,"😀 \u2028"\r\n'
    ds = read.open_dataset(write(tmp_path, "d.csv", data.encode()))
    assert ds.columns == ["id", "text"]
    assert rows_of(ds) == [
        {"id": "570306133677760513", "text": 'say "hi", ok'},
        {"id": "2", "text": "two\nlines\r\nhere"},
        {"id": "3", "text": ""},
        {"id": "4", "text": "😀 \u2028"},
    ]
    assert ds.problems == []


def test_csv_bad_utf8_is_replaced_and_reported_per_row_and_column(tmp_path: Path) -> None:
    data = b"id,a,b\n1,ok,ok\n2,caf\xe9,ok\n3,ok,\xff\xfe end\n"
    ds = read.open_dataset(write(tmp_path, "d.csv", data))
    rows = rows_of(ds)
    assert rows[1]["a"] == "caf\ufffd" and rows[2]["b"] == "\ufffd\ufffd end"
    assert [(p.row, p.column) for p in ds.problems] == [(2, "a"), (3, "b")]
    assert "U+FFFD" in ds.problems[0].message


def test_tsv_by_extension_and_by_forced_format(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tab", b"id\ttext\n1\ta,b\n")
    assert rows_of(read.open_dataset(path)) == [{"id": "1", "text": "a,b"}]
    other = write(tmp_path, "d.txt", b"id\ttext\n1\tx\n")
    assert rows_of(read.open_dataset(other, "tsv")) == [{"id": "1", "text": "x"}]


@pytest.mark.parametrize(
    ("name", "data", "error", "match"),
    [
        ("d.csv", b"", InputError, "empty"),
        ("d.csv", b"id,text,id\n1,2,3\n", InputError, "repeats column name"),
        ("d.csv", b"id,text\n1,a,extra\n", InputError, "Expected 2 columns"),
        ("d.xlsx", b"id\n1\n", UsageError, "--format"),
    ],
)
def test_unreadable_inputs_fail_with_a_message_naming_the_file(
    tmp_path: Path, name: str, data: bytes, error: type[Exception], match: str
) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(error, match=match) as info:
        rows_of(read.open_dataset(path))
    assert str(path) in str(info.value)


def test_missing_file_and_unknown_forced_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read.open_dataset(tmp_path / "nope.csv")
    with pytest.raises(UsageError, match="Unknown --format 'xls'"):
        read.open_dataset(write(tmp_path, "d.csv", b"a\n1\n"), "xls")


def test_jsonl_values_become_text_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    data = (
        b'{"id": 570306133677760513, "text": "a", "meta": {"k": [1, 2]}, "ok": true}\n\n'
        b'{"id": "x", "text": null, "ok": 1.5}\r\n   \n{"text": "c"}\n'
    )
    ds = read.open_dataset(write(tmp_path, "d.jsonl", data))
    assert ds.columns == ["id", "text", "meta", "ok"]
    assert rows_of(ds) == [
        {"id": "570306133677760513", "text": "a", "meta": '{"k":[1,2]}', "ok": "true"},
        {"id": "x", "text": None, "meta": None, "ok": "1.5"},
        {"id": None, "text": "c", "meta": None, "ok": None},
    ]


def test_jsonl_bad_utf8_is_repaired_and_reported_like_csv(tmp_path: Path) -> None:
    data = b'{"id": "1", "text": "ok"}\n\n{"id": "2", "text": "caf\xe9"}\n'
    ds = read.open_dataset(write(tmp_path, "d.jsonl", data))
    assert rows_of(ds)[1] == {"id": "2", "text": "caf\ufffd"}
    assert [(p.row, p.column) for p in ds.problems] == [(2, "text")]  # data row 2 (line 3)
    assert "line 3" in ds.problems[0].message


def test_jsonl_with_a_byte_order_mark(tmp_path: Path) -> None:
    ds = read.open_dataset(write(tmp_path, "d.jsonl", b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n'))
    assert ds.columns == ["text"]
    assert rows_of(ds) == [{"text": "a"}, {"text": "b"}]


def test_jsonl_of_empty_objects_has_no_columns_and_does_not_crash(tmp_path: Path) -> None:
    ds = read.open_dataset(write(tmp_path, "d.jsonl", b"{}\n{}\n"))
    assert ds.columns == []
    assert rows_of(ds) == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"a": 1}\n{"a": 2, "b": 3}\n', r"d.jsonl:2: field 'b' is not in the first row's fields \(a\)"),
        (b'{"a": 1}\n\n{"a": \n', r"d.jsonl:3: not valid JSON"),
        (b'{"a": 1}\n[1]\n', r"d.jsonl:2: each line must be a JSON object"),
        (b'"text"\n', r"d.jsonl:1: each line must be a JSON object"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        rows_of(read.open_dataset(write(tmp_path, "d.jsonl", data)))


def test_jsonl_is_read_in_batches_with_continuous_row_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read, "JSONL_ROWS", 3)
    monkeypatch.setattr(read, "GROUP_ROWS", 2)
    data = b"".join(b'{"t": "%d"}\n' % i for i in range(7))
    ds = read.open_dataset(write(tmp_path, "d.jsonl", data))
    starts = [(start, b.num_rows) for start, b in ds.batches()]
    assert [s for s, _ in starts] == [0, 3, 6]
    assert sum(n for _, n in starts) == 7


def test_parquet_numbers_and_binary_become_strings(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([570306133677760513, 2], pa.int64()),
            "score": [0.5, None],
            "raw": pa.array([b"ok", b"bad \xff"], pa.binary()),
            "tags": [["a"], []],
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    ds = read.open_dataset(path)
    assert rows_of(ds) == [
        {"id": "570306133677760513", "score": "0.5", "raw": "ok", "tags": '["a"]'},
        {"id": "2", "score": None, "raw": "bad \ufffd", "tags": "[]"},
    ]
    assert [(p.row, p.column) for p in ds.problems] == [(2, "raw")]


def test_in_memory_tables(tmp_path: Path) -> None:
    df = pl.DataFrame({"id": [1, 2], "text": ["a", None]})
    ds = read.from_table(df)
    assert ds.columns == ["id", "text"]
    assert rows_of(ds) == [{"id": "1", "text": "a"}, {"id": "2", "text": None}]
    assert rows_of(read.from_table(df.to_arrow())) == rows_of(read.from_table(df))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_only_the_needed_columns_are_converted_and_all_are_still_listed(tmp_path: Path, kind: str) -> None:
    """`prepare` reads just the template and id columns: a broken cell elsewhere is neither decoded nor
    reported, and the header (for messages and the manifest) still names every column."""
    if kind == "csv":
        path = write(tmp_path, "d.csv", b"id,text,junk,n\n1,hi,\xff\xfe,7\n2,yo,x,8\n")
    else:
        path = tmp_path / "d.parquet"
        pq.write_table(pa.table({"id": ["1", "2"], "text": ["hi", "yo"], "junk": ["a", "b"], "n": [7, 8]}), path)
    ds = read.open_dataset(path, only=["text", "id"])
    assert ds.columns == ["id", "text", "junk", "n"]
    assert rows_of(ds) == [{"id": "1", "text": "hi"}, {"id": "2", "text": "yo"}]
    assert ds.problems == []


# -- issue 15 (3, 4): rows longer than the parser's block, quotes never closed ------------------------------
def test_csv_rows_longer_than_a_block_are_read_whole_between_normal_rows(tmp_path: Path) -> None:
    big, bigger = "a" * 3_000_000, "b" * 1_200_000  # the parser reads 512 KB blocks
    data = f'id,text,note\n1,{big},x\n2,small,y\n3,"{bigger}\nsecond line",z\n4,tail,w\n'.encode()
    ds = read.open_dataset(write(tmp_path, "d.csv", data), only=["id", "text"])
    assert rows_of(ds) == [
        {"id": "1", "text": big},
        {"id": "2", "text": "small"},
        {"id": "3", "text": bigger + "\nsecond line"},
        {"id": "4", "text": "tail"},
    ]


def test_csv_long_rows_keep_row_numbers_across_many_plain_rows(tmp_path: Path) -> None:
    plain = "".join(f"{i},row {i}\n" for i in range(30_000))
    data = f"id,text\n{plain}big,{'c' * 700_000}\n{plain}".encode()
    rows = rows_of(read.open_dataset(write(tmp_path, "d.csv", data)))
    assert len(rows) == 60_001
    assert rows[30_000]["id"] == "big" and len(rows[30_000]["text"]) == 700_000
    assert rows[30_001] == {"id": "0", "text": "row 0"} and rows[-1] == {"id": "29999", "text": "row 29999"}


@pytest.mark.parametrize(
    "data, line",
    [
        (b'id,text\n1,"hello\n2,world\n', 2),  # the reproduction: was one row, text "hello\n2,world\n"
        (b'id,text\n1,"hello\n2,world', 2),  # no newline at the end
        (b'id,text\n1,ok\n2,"two\nlines"\n3,"a ""quoted"" word\n4,x\n5,y\n', 5),
        (b'id,text\n1,"ends in an escaped quote""', 2),
        (b"id,text\n1,ok\n2,'" + b"x" * 1_000_000 + b'\n3,"' + b"y" * 900_000 + b"\n", 4),  # after a long row
    ],
)
def test_csv_quote_never_closed_is_an_error_naming_the_line_it_opened(tmp_path: Path, data: bytes, line: int) -> None:
    path = write(tmp_path, "d.csv", data)
    with pytest.raises(InputError, match=f"opens on line {line} and is never closed"):
        rows_of(read.open_dataset(path))


@pytest.mark.parametrize(
    "data",
    [
        b'id,text\n1,"closed"\n',
        b"id,text\n1,plain",
        b'id,text\n1,"closed"',
        b'id,text\n1,"two\nlines"\n',
        b"id,text\n1,",
        b'id,text\n1,5" screen\n',
        b'id,text\n1,"ends with a newline\n"\n',
    ],
)
def test_csv_endings_that_look_odd_but_are_well_formed(tmp_path: Path, data: bytes) -> None:
    assert len(rows_of(read.open_dataset(write(tmp_path, "d.csv", data)))) == 1


def test_csv_parser_errors_are_escaped_and_cut_for_the_terminal(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", b"id,text\n1,\x1b[31mred\x07," + b"z" * 5000 + b"\n")
    with pytest.raises(InputError) as info:
        rows_of(read.open_dataset(path))
    message = str(info.value)
    assert "\x1b" not in message and "\x07" not in message and "\\x1b" in message
    assert len(message) < 600
