"""Join results back to the input rows and write OUTPUT (CSV, JSONL or Parquet), streaming.

The custom_id of each row is recomputed by running the very same `Builder` over the input again
(ids, renamed repeats and rejected rows come out identical), so the join needs no id map in memory:
each input batch looks up its own results in the ledger. Rows keep their input order and columns;
coldbatch adds `custom_id`, `response`, `label` and `confidence` (with --labels; see confidence.py),
`error`, `attempts`, `prompt_tokens` and `completion_tokens`. An embeddings job gets `embedding` (the
vector; see vectors.py) in place of `response`; a --schema job one column per top-level property.

The names, their checks, OUTPUT's format and the label parsing live in output_spec.py (no columnar imports);
a small CSV/TSV/JSONL job's OUTPUT is written by output_rows.py instead, byte for byte the same file.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from coldbatch import _gc
from coldbatch.builder.build import Builder
from coldbatch.builder.spec import RequestSpec
from coldbatch.dataset.read import open_dataset
from coldbatch.errors import InputError
from coldbatch.protocol import limits as L
from coldbatch.runner import structured, vectors
from coldbatch.runner.columns import column
from coldbatch.runner.output_spec import (
    ADDED,
    LABEL_ONLY,
    Classified,
    added_columns,
    check_columns,
    input_columns,
    output_kind,
    parse_label,
    part_path,
)
from coldbatch.runner.output_spec import publish as publish_file
from coldbatch.store.interfaces import LedgerStore

#: a label job's answers are a handful of distinct texts, parsed once each instead of once per row (2.4 M)
_label_of = functools.lru_cache(maxsize=4096)(parse_label)

__all__ = [
    "ADDED",
    "LABEL_ONLY",
    "Classified",
    "added_columns",
    "check_columns",
    "input_columns",
    "output_kind",
    "write_output",
]

#: rows joined per step: each carries a result dict from the ledger (4,096 instead of the reader's 16,384
#: cut the peak RSS of a 200k-row OUTPUT from 268 MB to 207 MB at the same speed)
OUTPUT_GROUP_ROWS = 4096


class _Writer:
    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.tmp = part_path(path)
        self._w: Any = None
        self._fh: Any = None

    def write(self, table: pa.Table) -> None:
        if self.kind == "csv" or self.kind == "tsv":
            if self._w is None:
                opts = pacsv.WriteOptions(delimiter="\t" if self.kind == "tsv" else ",")
                self._w = pacsv.CSVWriter(self.tmp, table.schema, write_options=opts)
            self._w.write_table(table)
        elif self.kind == "parquet":
            if self._w is None:
                import pyarrow.parquet as pq  # only a Parquet OUTPUT pays for the writer (~10 MB, 0.05 s)

                self._w = pq.ParquetWriter(self.tmp, table.schema)
            self._w.write_table(table)
        else:
            if self._fh is None:
                self._fh = self.tmp.open("wb")
            for row in table.to_pylist():
                self._fh.write(orjson.dumps(row) + b"\n")

    def close(self, publish: bool = True) -> None:
        """Finish the file; `publish` swaps it into place (atomically), else it is removed (OUTPUT untouched)."""
        if self._w is not None:
            self._w.close()
        if self._fh is not None:
            self._fh.close()
        publish_file(self.tmp, self.path, publish)


class _SameRequests:
    """Checks that the input still builds, byte for byte, the requests the job prepared (the manifest's
    per-shard sha256): OUTPUT joins answers to rows by recomputing each row's custom_id, and an input edited
    since (a row inserted, a text changed) would join answers to the wrong rows."""

    def __init__(self, input_path: Path, shards: list[dict[str, Any]]) -> None:
        self.input_path = input_path
        self.want = [(int(s["requests"]), str(s["sha256"])) for s in shards]
        self.i = 0
        self.left = self.want[0][0] if self.want else 0
        self.h = hashlib.sha256()

    def _changed(self, detail: str) -> InputError:
        return InputError(
            f"{self.input_path}: changed since the job prepared it ({detail}), so its answers could "
            "be joined to the wrong rows; OUTPUT was not written. Restore the input file as it was, "
            "then run `coldbatch collect JOB` (the answers are kept in the ledger)."
        )

    def feed(self, lines: pa.LargeStringArray) -> None:
        n = len(lines)
        if n == 0:
            return
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=n + lines.offset + 1)[lines.offset :]
        data = memoryview(lines.buffers()[2])
        pos = 0
        while pos < n:
            if self.i >= len(self.want):
                raise self._changed("it now makes more requests")
            take = min(self.left, n - pos)
            self.h.update(data[int(offsets[pos]) : int(offsets[pos + take])])
            pos += take
            self.left -= take
            if self.left == 0:
                if self.h.hexdigest() != self.want[self.i][1]:
                    raise self._changed(f"the requests of shard {self.i + 1} differ")
                self.i += 1
                self.h = hashlib.sha256()
                self.left = self.want[self.i][0] if self.i < len(self.want) else 0

    def finish(self) -> None:
        if self.i < len(self.want):
            raise self._changed("it now makes fewer requests")


@_gc.paused()  # millions of short-lived result dicts and list items, no cycles
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
    """Write OUTPUT atomically; returns row counts.

    `max_line_bytes` must be what the job's prepare used (rows over it were rejected there, so they are
    here too), and `shards` (the manifest's) makes it check first that the input did not change.
    `classified`: an --examples job's labels by question (its answers are embeddings; OUTPUT shows the
    label, its confidence and `{"label": ...}` as the response, as for any label job, not the vectors).
    `prefix` goes before every added column's name; a clash with an input column raises UsageError.
    """
    labels = classified.labels if classified is not None else spec.labels
    kind = output_kind(out)
    ds = open_dataset(input_path, fmt, group_rows=OUTPUT_GROUP_ROWS)
    check_columns(ds.columns, added_columns(spec, labels, prefix, classified is not None), str(input_path))
    builder = Builder(spec, file=ds.name, max_line_bytes=max_line_bytes)
    check = _SameRequests(input_path, shards) if shards is not None else None
    writer = _Writer(out, kind)
    rows = rejected = 0
    by_state = {"ok": 0, "failed": 0, "from_cache": 0}
    keyed = ledger.keyed(job_id)
    done = False
    try:
        for start, batch in ds.batches():
            n_before = len(builder.rejects)
            built = builder.build(start, batch, keep_ids=True)
            if check is not None:
                check.feed(built.lines)
            rejects = {r.line: r for r in builder.rejects[n_before:]}
            rejected += len(rejects)
            ids = built.ids or []
            results = ledger.results_for(job_id, ids, keyed=keyed)
            by_row = dict(zip(built.rows.tolist(), ids, strict=True))
            cols = _answer_columns(start, batch.num_rows, by_row, results, rejects, labels, classified, by_state)
            writer.write(_output_table(batch, cols, spec, labels, classified is not None, kind, prefix))
            rows += batch.num_rows
        if check is not None:
            check.finish()
        done = True
    finally:
        writer.close(publish=done)
    return {
        "rows": rows,
        "rejected": rejected,
        "succeeded": by_state["ok"],
        "failed": by_state["failed"],
        "from_cache": by_state["from_cache"],
    }


def _answer_columns(
    start: int,
    n: int,
    by_row: dict[int, str],
    results: dict[str, Any],
    rejects: dict[int | None, Any],
    labels: tuple[str, ...],
    classified: Classified | None,
    by_state: dict[str, int],
) -> dict[str, list[Any]]:
    """The added columns' values for `n` rows from row `start` + 1, each row's result found by its custom_id
    (`by_row`); counts each row's outcome into `by_state`."""
    cols: dict[str, list[Any]] = {c: [] for c in ADDED}
    for i in range(n):
        row = start + i + 1
        cid = by_row.get(row)
        res = results.get(cid) if cid else None
        _fill(cols, cid, res, rejects.get(row), labels)
        if classified is not None and res is not None:
            _relabel(cols, res, classified)
        if res is not None:
            by_state["ok" if res["state"] == "ok" else "failed"] += 1
            by_state["from_cache"] += res["attempts"] == 0 and res["state"] == "ok"
    return cols


def _output_table(
    batch: pa.RecordBatch,
    cols: dict[str, list[Any]],
    spec: RequestSpec,
    labels: tuple[str, ...],
    classified: bool,
    kind: str,
    prefix: str,
) -> pa.Table:
    """The input rows with the added columns (the label ones only for a label job; an embedding job's vector
    as a typed column, unless its examples classified it; a --schema job's properties, one column each)."""
    table = pa.Table.from_batches([batch])
    for c in ADDED:
        if c in LABEL_ONLY and not labels:
            continue
        if c == "response" and spec.endpoint == L.EMBEDDINGS and not classified:  # the vector, typed
            table = table.append_column(prefix + vectors.COLUMN, vectors.embedding_column(cols[c], kind))
            continue
        table = table.append_column(prefix + c, column(cols[c], _TYPES[c]))
    if spec.schema is not None:
        table = _append_schema_columns(table, spec.schema, cols["response"], cols["error"], prefix)
    return table


_TYPES = {
    "custom_id": pa.string(),
    "response": pa.string(),
    "label": pa.string(),
    "confidence": pa.float64(),
    "error": pa.string(),
    "attempts": pa.int32(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
}


def _fill(
    cols: dict[str, list[Any]], cid: str | None, res: dict[str, Any] | None, reject: Any, labels: tuple[str, ...]
) -> None:
    cols["custom_id"].append(cid)
    if res is None:
        err = f"{reject.code}: {reject.message}" if reject is not None else "not_run: no result (job cancelled?)"
        cols["response"].append(None)
        cols["label"].append(None)
        cols["confidence"].append(None)
        cols["error"].append(err)
        cols["attempts"].append(0)
        cols["prompt_tokens"].append(0)
        cols["completion_tokens"].append(0)
        return
    ok = res["state"] == "ok"
    cols["response"].append(res["content"])  # also the raw text of an invalid_output answer
    cols["label"].append(_label_of(res["content"], labels) if ok and labels else None)
    cols["confidence"].append(res.get("confidence") if ok else None)
    cols["error"].append(None if ok else f"{res['error_code']}: {res['error_message']}")
    cols["attempts"].append(res["attempts"])
    cols["prompt_tokens"].append(res["prompt_tokens"])
    cols["completion_tokens"].append(res["completion_tokens"])


def _relabel(cols: dict[str, list[Any]], res: dict[str, Any], classified: Classified) -> None:
    """Replace the row just filled in with the classifier's label for its question."""
    found = classified.answers.get(res["custom_id"]) if res["state"] == "ok" else None
    cols["label"][-1], cols["confidence"][-1] = found if found is not None else (None, None)
    cols["response"][-1] = orjson.dumps({"label": found[0]}).decode() if found is not None else None
    if found is None and res["state"] == "ok":
        cols["error"][-1] = "not_classified: the answer is not an embedding the classifier can read"


def _append_schema_columns(
    table: pa.Table, schema: dict[str, Any], responses: list[Any], errors: list[Any], prefix: str
) -> pa.Table:
    """One column per top-level schema property, filled from valid answers (named `prefix` + property)."""
    parsed = [
        structured.columns(r, schema) if r is not None and e is None else {}
        for r, e in zip(responses, errors, strict=True)
    ]
    for name in schema.get("properties", {}):
        table = table.append_column(prefix + name, column([p.get(name) for p in parsed], pa.string()))
    return table
