"""Prepare a small input with the standard library alone: no polars, pyarrow or numpy.

Why: for a 1,000-row job those imports were 0.4-0.5 s and 87 MB of a 3.7 s, 171 MB `coldbatch run`
(issue 11, client weight), and a few thousand rows gain nothing from columnar kernels. A CSV, TSV or
JSONL file of at most `_alloc.SMALL_INPUT_BYTES` is read with the csv module / orjson (`dataset.rows`,
the same code the Arrow reader falls back on), each request line is put together from `RequestSpec.frame()`
and orjson's escaping, and the lines go through `builder.write.LineShards`, cut by the one shard rule.

The result is byte-identical to the columnar path (`builder.build`): the same custom_ids, request lines,
shards, rejects, manifest and error messages (tests/unit/test_small_prepare.py runs both side by side).
Two things in the columnar output depend on how Arrow happened to batch the rows once there is more
than one batch (over `GROUP_ROWS` rows): the order of repaired-cell notes and `--on-duplicate-id suffix`
names that collide with a later real id. For such an input `build_into` returns None and the columnar
path prepares it instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from coldbatch.builder import write
from coldbatch.builder.spec import RequestSpec
from coldbatch.dataset import rows as R
from coldbatch.errors import InputError, LineError
from coldbatch.protocol.limits import Limits

#: rows per columnar batch (`dataset.read.GROUP_ROWS`); up to this many, the columnar path sees one batch
ONE_BATCH_ROWS = 16_384
#: what polars' `str.strip_chars()` strips (Rust's White_Space): Python's `str.strip()` also strips \x1c-\x1f
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
_WHITESPACE += "\u2028\u2029\u202f\u205f\u3000"


@dataclass
class SmallSource:
    """A small CSV/TSV/JSONL file, opened: its columns are known, its rows not read yet."""

    path: Path
    format: str
    columns: list[str]
    start: int = 0  #: CSV/TSV: byte offset of the first data row
    problems: list[R.Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path)


def open_source(path: str | Path, fmt: str | None) -> SmallSource:
    """Read the header (CSV/TSV) or the first row's fields (JSONL): the same checks and errors as
    `dataset.read.open_dataset`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    kind = R.detect_format(p, fmt)
    names = R.split_format(fmt)[1]
    if names is not None and kind not in ("csv", "tsv"):
        from coldbatch.errors import UsageError

        raise UsageError(f"{p}: --columns / --no-header apply to CSV and TSV files only ({kind} names its fields)")
    try:
        if kind == "jsonl":
            return SmallSource(p, kind, R.jsonl_columns(p))
        header, start = R.csv_layout(p, "\t" if kind == "tsv" else ",", names)
    except OSError as exc:
        raise InputError(f"{p}: cannot read as {kind}: {exc}") from exc
    return SmallSource(p, kind, header, start)


def read_rows(src: SmallSource, used: list[str]) -> tuple[list[str], list[list[str | None]]]:
    """(the `used` columns in file order, every data row's cells of those), CSV cells decoded to UTF-8
    with bad bytes repaired and noted, column by column, as the Arrow reader does for one batch.

    The whole file is held: it is at most `SMALL_INPUT_BYTES`, so this is a bounded few MB."""
    wanted = set(used)
    kept = [c for c in src.columns if c in wanted]
    index = [src.columns.index(c) for c in kept]
    if src.format == "jsonl":
        if not src.columns:
            return kept, []  # rows that are all `{}`: the columnar reader hands on none
        return kept, [[cells[i] for i in index] for cells in R.jsonl_rows(src.path, src.columns, src.problems)]
    delimiter = "\t" if src.format == "tsv" else ","
    quoting = delimiter != "\t"
    width = len(src.columns)
    raw: list[list[str]] = []
    for n, (row, _) in enumerate(R.py_rows(src.path, delimiter, src.start, quoting), 1):
        if len(row) != width:
            raise R.column_count_error(src.path, delimiter, quoting, n, width, row)
        raw.append([row[i] for i in index])
    out: list[list[str | None]] = [[None] * len(kept) for _ in raw]
    for j, name in enumerate(kept):
        for r, (cells, dest) in enumerate(zip(raw, out, strict=True), 1):
            dest[j] = R.utf8_cell(cells[j], r, name, src.problems)
    return kept, out


@dataclass
class SmallBuilt:
    """What `build_into` wrote into the staging folder (the manifest is `builder.api`'s to write)."""

    shards: list[write.ShardInfo]
    rows: int
    rejected: int
    renamed: int


@dataclass
class Requests:
    """A small input's requests, not written yet: what `builder.build.Builder` gives for the same rows."""

    kept: list[str]  #: the columns read, in file order
    rows: list[list[str | None]]  #: every data row's cells of `kept`
    lines: list[tuple[int, str, bytes]]  #: (row number, custom_id after renames, request line with its newline)
    rejects: list[LineError]  #: in row order
    renamed: int  #: rows sent under `id~n` (`--on-duplicate-id suffix`)


def requests(src: SmallSource, spec: RequestSpec, max_line_bytes: int, used: list[str]) -> Requests | None:
    """Read `src` (the `used` columns) and render its request lines; None when the columnar path must decide
    (see the module doc). OUTPUT's join calls this with every column to find each row's custom_id again.

    Raises:
        InputError: a malformed row, or repeated ids under `on_duplicate_id="error"` (as `builder.api` words it).
    """
    kept, rows = read_rows(src, used)
    rejects: list[LineError] = []
    ok = _requests(src, spec, kept, rows, rejects)
    renamed = 0
    if spec.id_column:
        ids = [cid for _, cid, _ in ok]
        repeated = len(set(ids)) != len(ids)
        if len(rows) > ONE_BATCH_ROWS and (repeated and spec.on_duplicate_id == "suffix"):
            return None
        renamed = _rename_repeats(ok) if repeated and spec.on_duplicate_id == "suffix" else 0
        if repeated and spec.on_duplicate_id == "error":
            _raise_repeats(src, spec, ok)
    if len(rows) > ONE_BATCH_ROWS and src.format != "jsonl" and src.problems:
        return None
    lines = _render(spec, max_line_bytes, ok, rejects, src.name)
    return Requests(kept, rows, lines, sorted(rejects, key=lambda r: r.line or 0), renamed)


def build_into(src: SmallSource, spec: RequestSpec, lim: Limits, tmp: Path) -> SmallBuilt | None:
    """Write `src`'s shards and rejects into `tmp`; None when the columnar path must do it (see the module doc).

    Raises:
        InputError: as `requests`.
    """
    from coldbatch.builder.api import used_columns

    got = requests(src, spec, min(lim.max_line_bytes, lim.max_bytes - 1), used_columns(spec))
    if got is None:
        return None
    files = write.LineShards(tmp, "shard-{:05d}.jsonl", lim.max_requests, lim.max_bytes)
    try:
        for n, _, line in got.lines:
            files.add(line, spec.model, n)
    finally:
        files.close()
    if got.rejects:
        write.write_rejects(tmp / write.REJECTS, got.rejects)
    return SmallBuilt(files.shards, len(got.rows), len(got.rejects), got.renamed)


def _requests(
    src: SmallSource, spec: RequestSpec, kept: list[str], rows: list[list[str | None]], rejects: list[LineError]
) -> list[list[Any]]:
    """[row, custom_id, content] of each row that makes a request; the others are rejected, as in `build.py`."""
    pos = {c: i for i, c in enumerate(kept)}
    columns = spec.template.columns
    pieces = [p if isinstance(p, str) else pos[p[0]] for p in spec.template.pieces]
    label = ", ".join(columns)
    id_pos = pos[spec.id_column] if spec.id_column else None
    ok: list[list[Any]] = []
    for n, cells in enumerate(rows, 1):
        cid = (cells[id_pos] or "") if id_pos is not None else f"row-{n}"
        if not cid:
            msg = f"the id column {spec.id_column!r} is empty"
            rejects.append(LineError(n, "missing_custom_id", msg, spec.id_column, src.name))
        elif columns and all(not (cells[pos[c]] or "").strip(_WHITESPACE) for c in columns):
            rejects.append(LineError(n, "empty_input", f"nothing to send: {label} empty", label, src.name))
        else:
            content = "".join(p if isinstance(p, str) else (cells[p] or "") for p in pieces)
            ok.append([n, cid, content])
    return ok


def _rename_repeats(ok: list[list[Any]]) -> int:
    """`--on-duplicate-id suffix` for one batch, as `build.IdTracker` does it: every id of the batch is taken
    first; the n-th use of an id becomes `id~n`, or, when one of those names is an id already, each repeat takes
    the next number whose name is free. Returns how many rows were renamed."""
    seen = {cid for _, cid, _ in ok}
    first: set[str] = set()
    where: list[int] = []
    for j, (_, cid, _) in enumerate(ok):
        if cid in first:
            where.append(j)
        first.add(cid)
    counters: dict[str, int] = {}
    names = []
    for j in where:
        base = ok[j][1]
        counters[base] = counters.get(base, 1) + 1
        names.append(f"{base}~{counters[base]}")
    if any(name in seen for name in names):
        taken: dict[str, int] = {}
        for k, j in enumerate(where):
            base, n = ok[j][1], taken.get(ok[j][1], 1)
            while f"{base}~{n + 1}" in seen:
                n += 1
            taken[base] = n + 1
            names[k] = f"{base}~{n + 1}"
            seen.add(names[k])
    for j, name in zip(where, names, strict=True):
        ok[j][1] = name
    return len(where)


def _raise_repeats(src: SmallSource, spec: RequestSpec, ok: list[list[Any]]) -> None:
    from coldbatch.builder.api import repeats_message

    first: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for n, cid, _ in ok:
        at = first.setdefault(cid, n)
        if at != n:
            pairs.append((n, at))
    ids = {n: cid for n, cid, _ in ok}
    raise InputError(repeats_message(src.name, spec, pairs[:50], len(pairs), ids))


def _render(
    spec: RequestSpec, max_line: int, ok: list[list[Any]], rejects: list[LineError], name: str
) -> list[tuple[int, str, bytes]]:
    """Each request line: `RequestSpec.frame()` around orjson's escaping (byte for byte what polars'
    `json_encode` gives, checked for every code point); a line over `max_line` bytes is rejected."""
    prefix, middle, suffix = (s.encode() for s in spec.frame())
    end = suffix + b"\n"
    dumps = orjson.dumps
    out: list[tuple[int, str, bytes]] = []
    for n, cid, content in ok:
        line = b"".join((prefix, dumps(cid), middle, dumps(content), end))
        if len(line) - 1 > max_line:
            rejects.append(LineError(n, "line_too_large", f"the request is over {max_line:,} bytes", None, name))
        else:
            out.append((n, cid, line))
    return out
