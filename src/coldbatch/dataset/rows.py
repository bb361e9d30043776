"""Reading rows with the standard library alone: the pieces of `dataset.read` that need no Arrow.

Why a module of its own: a small input is prepared without polars, pyarrow or numpy (0.4 s and 87 MB of
imports for a 1,000-row job, issue 11), so what it reads with must not import them. The Arrow reader
(`read.py`, `csvfile.py`) uses the same functions for what it does in Python (the header, the exact CSV
parse it falls back on, JSON lines), so there is one definition of each rule: format by suffix, header
and `--columns`, quoting, the open-quote and column-count errors, UTF-8 repair notes, JSON fields.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from coldbatch.core.text import printable
from coldbatch.errors import InputError, UsageError

Format = Literal["csv", "tsv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "parquet")
_BY_SUFFIX: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_EOF = "\x00coldbatch:end-of-file\x00"  # fed after the last line: inside a field, a quote was never closed

with contextlib.suppress(OverflowError):
    csv.field_size_limit(sys.maxsize)  # a long field is the builder's to judge (--max-line-bytes), not csv's


@dataclass(frozen=True, slots=True)
class Problem:
    """A cell that needed repair; `row` is 1-based (header excluded)."""

    row: int
    column: str
    message: str


def split_format(fmt: str | None) -> tuple[str | None, list[str] | None]:
    """`fmt` may name the columns of a CSV/TSV file without a header line: `"tsv:sentence,label"`, or
    `"csv:"` for `column1, column2, ...` (as many as the first line has). Returns (format, names or None when
    the file has a header). Kept in one string because the format travels through every reader's `fmt`."""
    if fmt is None or ":" not in fmt:
        return fmt, None
    kind, _, names = fmt.partition(":")
    return kind or None, [n.strip() for n in names.split(",")] if names.strip() else []


def headerless_format(fmt: str | None, columns: str | None, no_header: bool) -> str | None:
    """The `fmt` string for `--format`, `--columns a,b` and `--no-header` (see `split_format`)."""
    if columns is None and not no_header:
        return fmt
    names = [c.strip() for c in columns.split(",")] if columns else []
    if any(not n for n in names) or len(set(names)) != len(names):
        raise UsageError(f"--columns {columns!r}: give distinct, non-empty names separated by commas")
    return f"{fmt or ''}:{','.join(names)}"


def detect_format(path: Path, forced: str | None = None) -> Format:
    forced = split_format(forced)[0]
    if forced:
        if forced not in FORMATS:
            raise UsageError(f"Unknown --format {forced!r}; choose one of {', '.join(FORMATS)}")
        return forced  # type: ignore[return-value]
    fmt = _BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"Cannot tell the format of {path} from its extension; pass --format ({', '.join(FORMATS)})")
    return fmt


# -- CSV and TSV ------------------------------------------------------------------------------------------------
def csv_layout(p: Path, delimiter: str, names: list[str] | None) -> tuple[list[str], int]:
    """(column names, byte offset of the first data row) of a CSV (quotes as in RFC 4180) or a TSV (quotes
    are text). `names`: the file has no header line, its columns are these (an empty list: column1..N, N
    from the first line). Raises InputError on an empty file, a name count that does not match, or a header
    that repeats a name."""
    header, start = read_header(p, delimiter, delimiter != "\t")
    if names is not None:
        with p.open("rb") as fh:
            start = 3 if fh.read(3) == b"\xef\xbb\xbf" else 0  # the first data row starts after a BOM
        if names and len(names) != len(header):
            raise InputError(f"{p}:1: --columns names {len(names)} column(s), the first line has {len(header)}")
        header = names or [f"column{i}" for i in range(1, len(header) + 1)]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{p}: header repeats column name(s) {', '.join(dupes)}")
    return header, start


def read_header(p: Path, delimiter: str, quoting: bool = True) -> tuple[list[str], int]:
    """The header's column names and the byte offset of the first data row."""
    with contextlib.closing(py_rows(p, delimiter, 0, quoting)) as rows:
        first = next(rows, None)
    if first is None or not first[0]:
        raise InputError(f"{p}: the file is empty (no header row)")
    names = [cell.encode("latin-1").decode("utf-8", errors="replace") for cell in first[0]]
    if names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    return names, first[1]


def column_count_error(p: Path, delimiter: str, quoting: bool, row: int, expected: int, got: list[str]) -> InputError:
    return InputError(
        f"{p}: malformed {'CSV' if quoting else 'TSV'}: data row {row}: Expected "
        f"{expected} columns, got {len(got)}: {printable(delimiter.join(got))}"
    )


def utf8_cell(raw: str, row: int, column: str, problems: list[Problem]) -> str:
    """A cell read as Latin-1 (every byte kept) decoded as UTF-8; bad bytes become U+FFFD and are noted."""
    data = raw.encode("latin-1")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(row, column, f"not valid UTF-8 at byte {exc.start}; replaced with U+FFFD"))
        return data.decode("utf-8", errors="replace")


def py_rows(p: Path, delimiter: str, start: int, quoting: bool = True) -> Generator[tuple[list[str], int], None, None]:
    """(fields as Latin-1 text, so every byte survives; byte offset after the row) from `start` on.

    Raises InputError, with the line where it opened, at a quoted field still open at the end of the file.
    """
    consumed, lines = start, 0
    with p.open("rb") as raw:
        raw.seek(start)
        text = io.TextIOWrapper(raw, encoding="latin-1", newline="")

        def feed() -> Iterator[str]:
            nonlocal consumed, lines
            for line in text:
                consumed += len(line)  # Latin-1: one character per byte
                lines += 1
                yield line
            yield _EOF

        reader = (
            csv.reader(feed(), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
            if quoting
            else csv.reader(feed(), delimiter=delimiter, quoting=csv.QUOTE_NONE)
        )
        for row in reader:
            if not row:
                continue  # an empty line, skipped like Arrow does
            if row[-1].endswith(_EOF):
                if row == [_EOF]:
                    return
                raise _open_quote(p, start, lines, row[-1][: -len(_EOF)])
            yield row, consumed


def _open_quote(p: Path, start: int, lines: int, field: str) -> InputError:
    with p.open("rb") as f:
        first_line = f.read(start).count(b"\n") + 1
    opened = first_line + lines - 1 - field[:-1].count("\n")
    return InputError(
        f"{p}:{opened}: a quoted field opens on line {opened} and is never closed (it runs to "
        f"the end of the file); close the quote, or double a quote that is part of the text"
    )


# -- JSON lines -------------------------------------------------------------------------------------------------
def jsonl_columns(p: Path) -> list[str]:
    """The fields of the first non-blank line: the file's columns."""
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                return list(parse_json_row(raw, p, lineno)[0].keys())
    return []


def jsonl_rows(p: Path, columns: Sequence[str], problems: list[Problem]) -> Iterator[list[str | None]]:
    """Each non-blank line's values in column order, as text (nested values and numbers as JSON)."""
    rows = 0
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            obj, note = parse_json_row(raw, p, lineno)
            rows += 1
            cells = json_cells(obj, columns, p, lineno)
            if note is not None:
                bad = [n for n, c in zip(columns, cells, strict=True) if c and "\ufffd" in c]
                problems.extend(Problem(rows, n, note) for n in bad)
            yield cells


def parse_json_row(raw: bytes, p: Path, lineno: int) -> tuple[dict[str, Any], str | None]:
    """The row's object, and a note when its bytes were not UTF-8 and had to be repaired."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark, as some editors write
    note = None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        note = f"not valid UTF-8 at byte {exc.start} of line {lineno}; replaced with U+FFFD"
        raw = raw.decode("utf-8", errors="replace").encode()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{p}:{lineno}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{p}:{lineno}: each line must be a JSON object")
    return obj, note


def json_cells(obj: dict[str, Any], columns: Sequence[str], p: Path, lineno: int) -> list[str | None]:
    """One row's values in column order, as text (nested values as JSON); raises on an unknown field."""
    for k in obj:
        if k not in columns:
            raise InputError(f"{p}:{lineno}: field {k!r} is not in the first row's fields ({', '.join(columns)})")
    return [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in map(obj.get, columns)]
