"""Stream a dataset as Arrow record batches whose columns are all UTF-8 strings.

Why strings: ids like `570306133677760513` must never pass through a float, and a prompt template only
ever needs text. Why batches: memory stays flat in the number of rows (a 2.4 M-row CSV is read in
~16 MB blocks). Bytes that are not UTF-8 are replaced with U+FFFD and reported per row and column
(`Dataset.problems`), never silently dropped and never fatal.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from coldbatch.dataset import csvfile
from coldbatch.dataset.rows import (
    FORMATS,
    Format,
    Problem,
    csv_layout,
    detect_format,
    headerless_format,
    jsonl_columns,
    jsonl_rows,
    split_format,
)
from coldbatch.errors import InputError, UsageError

__all__ = ["FORMATS", "Dataset", "Format", "Problem", "detect_format", "from_table", "headerless_format"]
__all__ += ["open_dataset", "split_format"]

GROUP_ROWS = 16_384  # rows handed on at once: per-batch overhead is small, and two batches in flight stay small
JSONL_ROWS = 50_000


@dataclass(slots=True)
class Dataset:
    """A table source. Iterate `batches()` once; `problems` fills in while you do."""

    name: str
    columns: list[str]
    _source: Any
    problems: list[Problem] = field(default_factory=list)
    format: Format | None = None  #: the file format it was read as; None for an in-memory table
    #: decode text as Arrow string views: polars takes those over without a copy (`prepare` sets it; the
    #: CSV, Parquet and JSON writers of OUTPUT want plain strings)
    views: bool = False
    #: rows per batch handed on (OUTPUT uses fewer: each of its rows carries a result dict too)
    group_rows: int | None = None  # None: GROUP_ROWS
    #: the `fmt` it was opened with (with --columns/--no-header names), to open the same file again
    opened_as: str | None = None

    def batches(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Yield (first row index, 0-based; batch of string columns).

        The next batch is read and decoded on a helper thread while the caller works on this one (Arrow
        releases the GIL while it parses), one batch ahead at most, so memory stays bounded.
        """
        yield from _read_ahead(self._decoded())

    def _decoded(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        start = 0
        for batch in _regroup(self._source, self.group_rows or GROUP_ROWS):
            yield start, self._as_strings(batch, start)
            start += batch.num_rows

    def _as_strings(self, batch: pa.RecordBatch, start: int) -> pa.RecordBatch:
        arrays = [self._column_as_string(batch.column(i), name, start) for i, name in enumerate(batch.schema.names)]
        return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)

    def _column_as_string(self, col: pa.Array, name: str, start: int) -> pa.Array:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return col
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            try:
                return pc.cast(col, pa.string_view() if self.views else pa.string())
            except pa.ArrowInvalid:
                return self._repair_utf8(col, name, start)
        if pa.types.is_nested(col.type):
            return pa.array([None if v is None else orjson.dumps(v).decode() for v in col.to_pylist()], pa.string())
        return pc.cast(col, pa.string())

    def _repair_utf8(self, col: pa.Array, name: str, start: int) -> pa.Array:
        out: list[str | None] = []
        for i, value in enumerate(col.to_pylist()):
            if value is None:
                out.append(None)
                continue
            try:
                out.append(value.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self.problems.append(
                    Problem(start + i + 1, name, f"not valid UTF-8 at byte {exc.start}; replaced with U+FFFD")
                )
                out.append(value.decode("utf-8", errors="replace"))
        return pa.array(out, pa.string())


_DONE = object()


def _read_ahead(items: Iterator[Any]) -> Iterator[Any]:
    """Iterate `items` on a helper thread, one item ahead; exceptions are re-raised here, in order."""
    q: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as exc:  # handed to the consumer
            q.put((_DONE, exc))

    worker = threading.Thread(target=produce, name="dataset-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = q.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _regroup(source: Any, rows: int) -> Iterator[pa.RecordBatch]:
    """Merge small reader batches into ~`rows`-row batches (one copy of a few MB)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in source:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.concat_batches(pending) if len(pending) > 1 else pending[0]
            pending, count = [], 0
    if pending:
        yield pa.concat_batches(pending) if len(pending) > 1 else pending[0]


def open_dataset(
    path: str | Path,
    fmt: str | None = None,
    *,
    only: Sequence[str] | None = None,
    views: bool = False,
    group_rows: int | None = None,
) -> Dataset:
    """Open a file for streaming. Raises InputError when it cannot be read at all.

    `only`: the columns the batches need to carry (in file order; `columns` still lists all of them).
    CSV and Parquet then skip converting the rest (`prepare` reads just the template and id columns).
    `views` and `group_rows`: see `Dataset`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    kind = detect_format(p, fmt)
    names = split_format(fmt)[1]
    if names is not None and kind not in ("csv", "tsv"):
        raise UsageError(f"{p}: --columns / --no-header apply to CSV and TSV files only ({kind} names its fields)")
    try:
        if kind in ("csv", "tsv"):
            ds = _open_csv(p, "\t" if kind == "tsv" else ",", only, names)
        elif kind == "parquet":
            import pyarrow.parquet as pq  # only a Parquet input pays for the Parquet reader (~10 MB)

            pf = pq.ParquetFile(p)
            names = list(pf.schema_arrow.names)
            ds = Dataset(str(p), names, pf.iter_batches(batch_size=65_536, columns=_kept(names, only)))
        else:
            ds = _open_jsonl(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{p}: cannot read as {kind}: {exc}") from exc
    ds.format, ds.views, ds.group_rows, ds.opened_as = kind, views, group_rows, fmt
    return ds


def _kept(names: list[str], only: Sequence[str] | None) -> list[str] | None:
    """The columns of `names` that are in `only`, in file order (None: all)."""
    if only is None:
        return None
    wanted = set(only)
    return [c for c in names if c in wanted]


def from_table(table: Any, name: str = "<table>") -> Dataset:
    """Wrap an in-memory pyarrow Table, pandas DataFrame or polars DataFrame."""
    if not isinstance(table, pa.Table):
        table = table.to_arrow() if hasattr(table, "to_arrow") else pa.Table.from_pandas(table, preserve_index=False)
    return Dataset(name, list(table.column_names), iter(table.to_batches(max_chunksize=65_536)))


def _open_csv(p: Path, delimiter: str, only: Sequence[str] | None = None, names: list[str] | None = None) -> Dataset:
    """A CSV (quotes as in RFC 4180) or a TSV (quotes are text); `names`: see `rows.csv_layout`."""
    header, start = csv_layout(p, delimiter, names)
    quoting = delimiter != "\t"
    return Dataset(str(p), header, csvfile.csv_batches(p, delimiter, header, start, _kept(header, only), quoting))


def _open_jsonl(p: Path) -> Dataset:
    columns = jsonl_columns(p)
    ds = Dataset(str(p), columns, None)
    ds._source = _jsonl_batches(p, columns, ds.problems)
    return ds


def _jsonl_batches(p: Path, columns: list[str], problems: list[Problem]) -> Iterator[pa.RecordBatch]:
    cols: list[list[str | None]] = [[] for _ in columns]
    pending = 0
    for cells in jsonl_rows(p, columns, problems):
        for values, cell in zip(cols, cells, strict=True):
            values.append(cell)
        pending += 1
        if pending >= JSONL_ROWS and columns:
            yield _jsonl_batch(columns, cols)
            cols, pending = [[] for _ in columns], 0
    if pending and columns:  # rows that are all `{}` have nothing to hand on
        yield _jsonl_batch(columns, cols)


def _jsonl_batch(columns: list[str], cols: list[list[str | None]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(v, pa.string()) for v in cols], names=columns)
