"""`prepare()`: the library entry point behind `coldbatch prepare`."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coldbatch import __version__
from coldbatch.builder import write
from coldbatch.builder.build import Builder
from coldbatch.builder.spec import RequestSpec
from coldbatch.core import template as tpl
from coldbatch.core.shard import LineTooLarge, ShardPlanner
from coldbatch.dataset.read import Dataset, from_table, open_dataset
from coldbatch.errors import InputError, UsageError
from coldbatch.protocol.limits import Limits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare` wrote: the folder and its manifest (as a dict)."""

    out: Path
    manifest: dict[str, Any]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.manifest["shards"])


def _dataset(source: Any, fmt: str | None, spec: RequestSpec) -> Dataset:
    if isinstance(source, str | Path):
        return open_dataset(source, fmt, only=used_columns(spec), views=True)
    return from_table(source)


def used_columns(spec: RequestSpec) -> list[str]:
    """The columns requests are built from: the template's and the id column."""
    return [*spec.template.columns, *([spec.id_column] if spec.id_column else [])]


def check_columns(ds: Dataset, spec: RequestSpec) -> None:
    """Raise a UsageError naming a template or id column that `ds` lacks, and the columns it has."""
    option = "--input-column" if spec.input_column and not spec.prompt else "--prompt"
    tpl.check_columns(spec.template, ds.columns, file=ds.name, option=option)
    if spec.id_column and spec.id_column not in ds.columns:
        raise UsageError(
            f"--id-column {spec.id_column!r} is not a column of {ds.name}; available columns: {', '.join(ds.columns)}"
        )


def prepare(
    source: Any, out: str | Path, spec: RequestSpec, *, limits: Limits | None = None, fmt: str | None = None
) -> PrepareResult:
    """Turn a dataset (a path, or a pyarrow/pandas/polars table) into shards + manifest.json in `out`.

    Raises:
        UsageError: a template column or the id column is missing.
        InputError: the input cannot be read, or it repeats ids under `on_duplicate_id="error"`.
    """
    lim = limits or Limits()
    ds = _dataset(source, fmt, spec)
    check_columns(ds, spec)
    out = Path(out)
    tmp = write.staging_folder(out)
    try:
        manifest = _build_all(ds, spec, lim, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write.publish(tmp, out)
    logger.info("prepared", extra={"action": "prepared", "out": str(out), "requests": manifest["totals"]})
    return PrepareResult(out.resolve(), manifest)


def _build_all(ds: Dataset, spec: RequestSpec, lim: Limits, tmp: Path) -> dict[str, Any]:
    builder = Builder(spec, file=ds.name, max_line_bytes=min(lim.max_line_bytes, lim.max_bytes - 1))
    writer = write.ShardWriter(tmp, ShardPlanner(lim.max_requests, lim.max_bytes))
    rows = 0
    try:
        for start, batch in ds.batches():
            rows = start + batch.num_rows
            writer.add(builder.build(start, batch), spec.model)
    except LineTooLarge as exc:  # pragma: no cover - guarded by max_line_bytes above
        raise InputError(str(exc)) from exc
    finally:
        writer.close()
    if builder.ids is not None:
        builder.ids.finish()
    if builder.ids is not None and builder.ids.total_repeats and spec.on_duplicate_id == "error":
        raise InputError(_repeats_message(ds, spec, builder.ids.errors, builder.ids.total_repeats))
    if builder.rejects:
        write.write_rejects(tmp / write.REJECTS, builder.rejects)
    manifest = _manifest(ds, spec, lim, writer.shards, rows, builder)
    write.write_json(tmp / write.MANIFEST, manifest)
    return manifest


def _repeats_message(ds: Dataset, spec: RequestSpec, repeats: list[tuple[int, int]], total: int) -> str:
    """Name each repeating row, its id, and the row it repeats (ids read back from the id column)."""
    wanted = {row for row, _ in repeats[:20]}
    ids: dict[int, str] = {}
    again = open_dataset(ds.name, ds.format) if ds.format is not None else None
    if again is not None and spec.id_column:
        for start, batch in again.batches():
            if start + batch.num_rows < min(wanted):
                continue
            for i, cid in enumerate(batch.column(spec.id_column).to_pylist()):
                if start + i + 1 in wanted:
                    ids[start + i + 1] = cid
            if start + batch.num_rows >= max(wanted):
                break
    lines = [f"  {ds.name}: row {row}: id {ids.get(row, '?')!r} repeats row {first}" for row, first in repeats[:20]]
    more = f"\n  … and {total - 20} more" if total > 20 else ""
    return (
        f"{ds.name}: {total} row(s) repeat an earlier id in column {spec.id_column!r}, so their results "
        f"could not be told apart:\n"
        + "\n".join(lines)
        + more
        + "\nFix the data, or pass --on-duplicate-id suffix to send them as 'ID~2', 'ID~3', …"
    )


def _manifest(
    ds: Dataset, spec: RequestSpec, lim: Limits, shards: list[write.ShardInfo], rows: int, builder: Builder
) -> dict[str, Any]:
    repeats = builder.ids.total_repeats if builder.ids else 0
    return {
        "format": write.MANIFEST_FORMAT,
        "created_by": f"coldbatch {__version__}",
        "input": {"name": Path(ds.name).name, "rows": rows, "columns": ds.columns},
        "request": spec.describe(),
        "limits": {"max_requests": lim.max_requests, "max_bytes": lim.max_bytes, "max_line_bytes": lim.max_line_bytes},
        "shards": [s.to_json() for s in shards],
        "totals": {
            "rows": rows,
            "requests": sum(s.requests for s in shards),
            "bytes": sum(s.bytes for s in shards),
            "shards": len(shards),
            "rejected": builder.rejected,
            "renamed_ids": repeats if spec.on_duplicate_id == "suffix" else 0,
        },
        "rejects": write.REJECTS if builder.rejects else None,
        "repaired_cells": [{"row": p.row, "column": p.column, "message": p.message} for p in ds.problems[:1000]],
    }
