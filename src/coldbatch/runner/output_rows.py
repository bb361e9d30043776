"""OUTPUT of a small job, joined row by row with the stdlib: the same bytes as output.py's columnar writers.

Why a second writer: for a 1,000-row job, polars, pyarrow and numpy cost more to import (0.4-0.5 s CPU,
~87 MB) than the whole join takes. A small input (CSV, TSV or JSONL of at most `_alloc.SMALL_INPUT_BYTES`)
written to CSV, TSV or JSONL comes here; Parquet, an --examples job (its classifier is numpy) and larger
inputs go to output.py. `write_job_output` (runner/report.py) is the one place that chooses.

"The same bytes" is the rule, checked by tests against the columnar writers on the airline tweets and on
random tables: a file never depends on which writer made it. What the columnar writers do, spelled here:
- CSV/TSV (pyarrow's CSV writer): the header names and every text cell in double quotes (a quote doubled),
  even an empty text; a missing value (null) is nothing at all; integers as digits; a float in the shortest
  form that reads back exactly, as plain decimals for exponents -6..9 (`0.000001`, `1000000000`) and as
  `1e-7`, `1.5e+10` outside; `nan`, `inf`. Lines end in `\\n`. A job without rows writes an empty file.
- JSONL: each row one orjson object, the columns in order; an embeddings job's vector as an array of floats.
Rows are recognised as in output.py: the requests are built again from the input (same ids, same rejects),
and the manifest's per-shard sha256 says whether the input changed since the job prepared it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from coldbatch import _alloc
from coldbatch.builder import small
from coldbatch.builder.spec import RequestSpec
from coldbatch.errors import InputError
from coldbatch.protocol import limits as L
from coldbatch.runner import structured, vectors
from coldbatch.runner.output_spec import (
    ADDED,
    LABEL_ONLY,
    Classified,
    added_columns,
    check_columns,
    output_kind,
    parse_label,
    part_path,
    publish,
)
from coldbatch.store.interfaces import LedgerStore

TEXT_INPUTS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_INT = ("attempts", "prompt_tokens", "completion_tokens")


def takes_small_path(input_path: Path, out: Path, fmt: str | None, classified: bool) -> bool:
    """True when this module writes OUTPUT: a small CSV/TSV/JSONL input, a CSV/TSV/JSONL OUTPUT, no classifier."""
    kind = (fmt or "").partition(":")[0] or TEXT_INPUTS.get(input_path.suffix.lower())
    if classified or kind not in ("csv", "tsv", "jsonl") or output_kind(out) == "parquet":
        return False
    try:
        return os.path.getsize(input_path) <= _alloc.SMALL_INPUT_BYTES
    except OSError:
        return False  # the columnar path reports a missing input


class _SameLines:
    """output.py's `_SameRequests` for lines as text: the input must still build, byte for byte, the
    requests the job prepared (each shard's sha256 in the manifest), else answers join to the wrong rows."""

    def __init__(self, input_path: Path, shards: list[dict[str, Any]]) -> None:
        self.input_path = input_path
        self.want = [(int(s["requests"]), str(s["sha256"])) for s in shards]
        self.i, self.n, self.h = 0, 0, hashlib.sha256()

    def _changed(self, detail: str) -> InputError:
        return InputError(
            f"{self.input_path}: changed since the job prepared it ({detail}), so its answers could "
            "be joined to the wrong rows; OUTPUT was not written. Restore the input file as it was, "
            "then run `coldbatch collect JOB` (the answers are kept in the ledger)."
        )

    def feed(self, lines: Sequence[bytes]) -> None:
        for line in lines:
            if self.i >= len(self.want):
                raise self._changed("it now makes more requests")
            self.h.update(line)
            self.n += 1
            if self.n == self.want[self.i][0]:
                if self.h.hexdigest() != self.want[self.i][1]:
                    raise self._changed(f"the requests of shard {self.i + 1} differ")
                self.i, self.n, self.h = self.i + 1, 0, hashlib.sha256()

    def finish(self) -> None:
        if self.i < len(self.want):
            raise self._changed("it now makes fewer requests")


def arrow_float(x: float) -> str:
    """`x` as pyarrow's CSV writer spells a float64: the shortest digits that read back exactly (Python's
    repr finds the same ones), plain for decimal exponents -6..9, else `d.ddde±x` without padding."""
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    r = repr(float(x))
    sign = "-" if r.startswith("-") else ""
    mantissa, _, exp = r.lstrip("-").partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0").rstrip("0")
    if not digits:
        return sign + "0"
    # position of the decimal point relative to the first significant digit
    point = (len(whole) if whole.strip("0") else -(len(frac) - len(frac.lstrip("0")))) + int(exp or 0)
    exponent = point - 1
    if not -6 <= exponent < 10:
        tail = "." + digits[1:] if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{tail}e{'+' if exponent >= 0 else ''}{exponent}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _text(v: Any) -> str:
    return "" if v is None else '"' + v.replace('"', '""') + '"'


def _number(v: Any) -> str:
    return "" if v is None else str(v)


def _float(v: Any) -> str:
    return "" if v is None else arrow_float(v)


class _RowWriter:
    """Writes rows (lists of cell values in column order) as pyarrow's CSV writer or output.py's JSONL
    writer would; the header goes with the first rows, so a job without rows leaves an empty file."""

    def __init__(self, path: Path, kind: str, names: list[str], cells: list[Callable[[Any], str]]) -> None:
        self.path, self.kind, self.names, self.cells = path, kind, names, cells
        self.sep = "\t" if kind == "tsv" else ","
        self.tmp = part_path(path)
        self._fh: IO[bytes] = self.tmp.open("wb")
        self._header = kind != "jsonl"

    def write(self, rows: list[list[Any]]) -> None:
        if not rows:
            return
        if self.kind == "jsonl":
            names = self.names
            self._fh.write(b"".join(orjson.dumps(dict(zip(names, r, strict=True))) + b"\n" for r in rows))
            return
        sep, cells = self.sep, self.cells
        out = []
        if self._header:
            out.append(sep.join(map(_text, self.names)))
            self._header = False
        out.extend(sep.join([f(v) for f, v in zip(cells, r, strict=True)]) for r in rows)
        self._fh.write(("\n".join(out) + "\n").encode())

    def close(self, done: bool) -> None:
        self._fh.close()
        publish(self.tmp, self.path, done)


def _answer(cid: str | None, res: dict[str, Any] | None, reject: Any, labels: tuple[str, ...]) -> dict[str, Any]:
    """The added columns' values of one row (output.py's `_fill`, one row at a time)."""
    if res is None:
        err = f"{reject.code}: {reject.message}" if reject is not None else "not_run: no result (job cancelled?)"
        return (
            dict.fromkeys(ADDED, None)
            | {"custom_id": cid, "error": err, "attempts": 0}
            | {
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
        )
    ok = res["state"] == "ok"
    confidence = res.get("confidence") if ok else None
    return {
        "custom_id": cid,
        "response": res["content"],  # also the raw text of an invalid_output answer
        "label": parse_label(res["content"], labels) if ok else None,
        "confidence": None if confidence is None else float(confidence),
        "error": None if ok else f"{res['error_code']}: {res['error_message']}",
        "attempts": res["attempts"],
        "prompt_tokens": res["prompt_tokens"],
        "completion_tokens": res["completion_tokens"],
    }


class _Layout:
    """Which added columns a job's OUTPUT has, how each is spelled in CSV, and one row's added cells."""

    def __init__(self, spec: RequestSpec, kind: str, n_input: int) -> None:
        self.labels = spec.labels
        self.kind = kind
        self.embedding = spec.endpoint == L.EMBEDDINGS
        self.schema = spec.schema
        self.added = [c for c in ADDED if not (c in LABEL_ONLY and not self.labels)]
        cells: list[Callable[[Any], str]] = [_text] * n_input
        cells += [_float if c == "confidence" else _number if c in _INT else _text for c in self.added]
        self.cells = cells + [_text] * len((self.schema or {}).get("properties", {}))

    def cells_of(self, answer: dict[str, Any]) -> list[Any]:
        values = [answer[c] for c in self.added]
        if self.embedding and self.kind == "jsonl":  # a real array in JSONL; CSV keeps the answer's JSON text
            at = self.added.index("response")
            vector = vectors.vector(values[at])
            values[at] = None if vector is None else [float(x) for x in vector]
        if self.schema is not None:
            ok = answer["response"] is not None and answer["error"] is None
            parsed = structured.columns(answer["response"], self.schema) if ok else {}
            values += [parsed.get(name) for name in self.schema.get("properties", {})]
        return values


def write_output(
    ledger: LedgerStore,
    job_id: str,
    input_path: Path,
    out: Path,
    spec: RequestSpec,
    *,
    fmt: str | None = None,
    max_line_bytes: int = L.MAX_LINE_BYTES,
    shards: list[dict[str, Any]] | None = None,
    classified: Classified | None = None,
    prefix: str = "",
) -> dict[str, int]:
    """Write OUTPUT (see output.write_output for the arguments): THE place that picks the writer. A small
    input (`takes_small_path`) is joined here; anything else loads the columnar writer and goes there."""
    if takes_small_path(input_path, out, fmt, classified is not None):
        written = write_output_rows(
            ledger, job_id, input_path, out, spec, fmt=fmt, max_line_bytes=max_line_bytes, shards=shards, prefix=prefix
        )
        if written is not None:
            return written
    from coldbatch.runner import output

    return output.write_output(
        ledger,
        job_id,
        input_path,
        out,
        spec,
        fmt=fmt,
        max_line_bytes=max_line_bytes,
        shards=shards,
        classified=classified,
        prefix=prefix,
    )


#: one batch of the input, built: (first row index, 0-based; the rows' values, all columns; the request
#: lines built from them; those lines' 1-based row numbers; their custom_ids; the rows rejected, by row)
Built = tuple[int, list[list[Any]], list[bytes], list[int], list[str], dict[int, Any]]
#: rows joined per step (output.py's OUTPUT_GROUP_ROWS): each holds its results from the ledger meanwhile
GROUP_ROWS = 4096


def write_output_rows(
    ledger: LedgerStore,
    job_id: str,
    input_path: Path,
    out: Path,
    spec: RequestSpec,
    *,
    fmt: str | None = None,
    max_line_bytes: int = L.MAX_LINE_BYTES,
    shards: list[dict[str, Any]] | None = None,
    prefix: str = "",
) -> dict[str, int] | None:
    """output.write_output for a small input (`takes_small_path`): the same OUTPUT file, the same counts;
    None (nothing written) when the stdlib builder leaves this input to the columnar path."""
    kind = output_kind(out)
    built = built_batches(input_path, fmt, spec, max_line_bytes)
    if built is None:
        return None
    columns, batches = built
    added = added_columns(spec, spec.labels, prefix)
    check_columns(columns, added, str(input_path))
    layout = _Layout(spec, kind, len(columns))
    check = _SameLines(input_path, shards) if shards is not None else None
    writer = _RowWriter(out, kind, columns + added, layout.cells)
    counts = {"rows": 0, "rejected": 0, "succeeded": 0, "failed": 0, "from_cache": 0}
    keyed = ledger.keyed(job_id)
    done = False
    try:
        for start, rows, lines, numbers, ids, rejects in batches:
            if check is not None:
                check.feed(lines)
            results = ledger.results_for(job_id, ids, keyed=keyed)
            by_row = dict(zip(numbers, ids, strict=True))
            joined = []
            for i, row in enumerate(rows, start + 1):
                cid = by_row.get(i)
                res = results.get(cid) if cid else None
                joined.append(row + layout.cells_of(_answer(cid, res, rejects.get(i), spec.labels)))
                if res is not None:
                    counts["succeeded" if res["state"] == "ok" else "failed"] += 1
                    counts["from_cache"] += res["attempts"] == 0 and res["state"] == "ok"
            writer.write(joined)
            counts["rows"] += len(rows)
            counts["rejected"] += len(rejects)
        if check is not None:
            check.finish()
        done = True
    finally:
        writer.close(done)
    return counts


def built_batches(
    input_path: Path, fmt: str | None, spec: RequestSpec, max_line_bytes: int
) -> tuple[list[str], Iterator[Built]] | None:
    """The input's columns, and its rows `GROUP_ROWS` at a time with the requests `prepare` built from them
    (`builder.small.requests`, the stdlib builder, over every column); None when that builder leaves the
    input to the columnar path (its module doc says when)."""
    src = small.open_source(input_path, fmt)
    got = small.requests(src, spec, max_line_bytes, src.columns)
    if got is None:
        return None
    return got.kept, _in_groups(got)


def _in_groups(got: small.Requests) -> Iterator[Built]:
    rejects = {r.line: r for r in got.rejects}
    lines, j = got.lines, 0
    for start in range(0, len(got.rows), GROUP_ROWS):
        end = min(start + GROUP_ROWS, len(got.rows))
        k = j
        while k < len(lines) and lines[k][0] <= end:
            k += 1
        part, j = lines[j:k], k
        mine = {n: rejects[n] for n in range(start + 1, end + 1) if n in rejects}
        yield start, got.rows[start:end], [x[2] for x in part], [x[0] for x in part], [x[1] for x in part], mine
