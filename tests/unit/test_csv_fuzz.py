"""Property test of the CSV reader (issue 15, "fuzz the readers"): any table Python's csv module writes — quotes,
delimiters, newlines of every kind, fields longer than the parser's block — is read back cell for cell, and a
quote left open at the end is always reported. The block is made tiny so the long-row path runs constantly.
Budget: `max_examples` and a per-example deadline keep it to a few seconds in CI."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coldbatch.dataset import csvfile, read
from coldbatch.errors import InputError

_TEXT = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\té😀\x00')), max_size=40)
_CELL = st.one_of(_TEXT, st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", '"', "\n"]), st.integers(1, 3000)))
_ROWS = st.lists(st.lists(_CELL, min_size=2, max_size=2), min_size=1, max_size=12)
FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _written(rows: list[list[str]], crlf: bool) -> bytes:
    buf = io.StringIO(newline="")
    # QUOTE_MINIMAL quotes only what is in the line terminator: with "\n" it leaves a bare "\r" unquoted,
    # which every reader takes for a line break, so that case quotes everything
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
    w.writerow(["id", "text"])
    w.writerows(rows)
    return buf.getvalue().encode()


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 1024)


@FAST
@given(rows=_ROWS, crlf=st.booleans())
@example(rows=[['aaaaaa"\x00é', "x" * 1034], ["", "\r"]], crlf=True)  # found by this test: Arrow misparsed it
def test_any_written_table_reads_back_cell_for_cell(
    tmp_path: Path, tiny_blocks: None, rows: list[list[str]], crlf: bool
) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(_written(rows, crlf))
    got = [[r["id"], r["text"]] for _, b in read.open_dataset(path).batches() for r in b.to_pylist()]
    assert got == rows


@FAST
@given(rows=_ROWS, tail=_TEXT.filter(lambda t: '"' not in t))
def test_a_quote_opened_in_the_last_row_and_never_closed_is_always_reported(
    tmp_path: Path, tiny_blocks: None, rows: list[list[str]], tail: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(_written(rows, False) + f'last,"{tail}'.encode())
    with pytest.raises(InputError, match="is never closed"):
        for _ in read.open_dataset(path).batches():
            pass
