"""CSV files: Arrow's streaming parser, with Python's csv module for the two things Arrow cannot do.

Arrow parses in fixed blocks (512 KB: bigger blocks cost memory on every file) and gives up on a row
longer than a block ("straddling object straddles two block boundaries"): one 3 MB review failed a whole
job. Arrow also takes a quoted field that is never closed to the end of the file, silently. So:

- when Arrow stops at a long row, Python's csv module (the same quoting rules) reads on from the last
  row boundary Arrow started at, up to and including that row, and Arrow resumes at the byte after it.
  The long row is handed on like any other: the builder sends it if its request fits `--max-line-bytes`
  and rejects it (alone) if not. Python holds that one row in memory while it reads it.
- the file's last row is checked for a quote left open: the last column is always read, and when its
  final value could be an unclosed field, the last stretch of the file is parsed again exactly and the
  line where the quote opened is reported. A quote opened and closed mid-file by another stray quote
  cannot be told from a real multi-line field; no reader can say which one the author meant.

TSV (`quoting=False`) has no quoting convention: a quote is text, a line is a row, and a row with more or
fewer fields than the header is refused with its data row number. Reading a TSV with CSV's quote rules
merged hundreds of lines of a sentence file into a few giant "fields", silently (issue 16).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from coldbatch.dataset.rows import column_count_error, read_header
from coldbatch.dataset.rows import py_rows as _py_rows

__all__ = ["BLOCK_BYTES", "csv_batches", "read_header"]

BLOCK_BYTES = 1 << 19  # the CSV reader reads ahead several blocks: bigger blocks cost RSS, not speed


def csv_batches(
    p: Path, delimiter: str, header: list[str], start: int, kept: Sequence[str] | None, quoting: bool = True
) -> Iterator[pa.RecordBatch]:
    """The data rows from byte `start` on, as batches of binary columns (`kept` only, in that order).
    `quoting=False`: quotes are text (TSV)."""
    kept = list(header) if kept is None else list(kept)
    size, done = p.stat().st_size, 0
    while start < size:  # Arrow refuses to open nothing ("Empty CSV file")
        got = 0
        try:
            for batch in _arrow_segment(p, delimiter, header, start, kept, quoting):
                got += batch.num_rows
                yield batch
            return
        except pa.ArrowInvalid:
            # Arrow could not chunk or parse what follows: a row longer than its block, or (found by the fuzz
            # test) a quoted bare CR just after a block boundary in a valid file. Python's csv reads that stretch
            # and is the judge: it raises if the data really is malformed.
            pass
        rows, end = _long_row(p, delimiter, header, start, got, kept, first_row=done + got + 1, quoting=quoting)
        done += got + rows.num_rows
        if rows.num_rows:
            yield rows
        if end is None:
            return
        start = end


def _arrow_segment(
    p: Path, delimiter: str, header: list[str], start: int, kept: list[str], quoting: bool = True
) -> Iterator[pa.RecordBatch]:
    """Arrow's reader from byte `start` (a row boundary) to the end; checks the file's last row."""
    last = header[-1]
    include = kept if last in kept else [*kept, last]
    source = pa.OSFile(str(p))
    source.seek(start)
    reader = pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=header),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=quoting, quote_char='"' if quoting else False
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.binary()),
            include_columns=include,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    final: bytes | None = None
    try:
        for batch in reader:
            if not batch.num_rows:
                continue
            final = batch.column(len(include) - 1)[-1].as_py()
            yield batch if include is kept else batch.select(range(len(kept)))
    finally:
        source.close()
    if quoting and final is not None and _may_end_open(p, final, delimiter):
        _find_open_quote(p, delimiter, start)


def _may_end_open(p: Path, value: bytes, delimiter: str) -> bool:
    """Could `value`, the last field of the file, be a quoted field that runs to the end of the file?

    A never-closed field holds everything up to the end: the file's closing newline too, or, without
    one, bytes that are not what a plain unquoted field would be. False alarms only cost a re-read."""
    with p.open("rb") as f:
        f.seek(max(0, f.seek(0, io.SEEK_END) - len(value) - 1))
        tail = f.read()
    if tail.endswith((b"\n", b"\r")):
        return value.endswith((b"\n", b"\r"))
    plain = b'"' not in value and tail.endswith(value)
    before = tail[-len(value) - 1 : len(tail) - len(value)]
    return not (plain and before in (delimiter.encode(), b"\n", b"\r"))


def _find_open_quote(p: Path, delimiter: str, start: int) -> None:
    """Parse from `start` to the end exactly; raises InputError at a quoted field that is never closed."""
    for _ in _py_rows(p, delimiter, start):
        pass


def _long_row(
    p: Path,
    delimiter: str,
    header: list[str],
    start: int,
    skip: int,
    kept: list[str],
    *,
    first_row: int,
    quoting: bool = True,
) -> tuple[pa.RecordBatch, int | None]:
    """Arrow stopped: read on from `start` with Python, past the `skip` rows Arrow handed on, up to and
    including the first row longer than a block, or a few blocks' worth of rows. Returns those rows and the
    byte offset after them (None: the end of the file). `first_row` numbers the first of them, for errors."""
    index = [header.index(c) for c in kept]
    cols: list[list[bytes]] = [[] for _ in kept]
    prev, end, stretch = start, None, 0
    with contextlib.closing(_py_rows(p, delimiter, start, quoting)) as rows:
        for n, (row, end) in enumerate(rows):
            if n >= skip:
                if len(row) != len(header):
                    raise column_count_error(p, delimiter, quoting, first_row + n - skip, len(header), row)
                for values, i in zip(cols, index, strict=True):
                    values.append(row[i].encode("latin-1"))
                stretch += end - prev
                if end - prev > BLOCK_BYTES or stretch > 4 * BLOCK_BYTES:
                    break
            prev = end
        else:
            end = None
    arrays = [pa.array(v, pa.binary()) for v in cols]  # what Arrow gives: batches are concatenated
    return pa.RecordBatch.from_arrays(arrays, names=kept), end
