"""`prepare()`: the library entry point behind `coldbatch prepare`."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coldbatch import __version__
from coldbatch._alloc import SMALL_INPUT_BYTES
from coldbatch.builder import small, write
from coldbatch.builder.spec import RequestSpec
from coldbatch.core import template as tpl
from coldbatch.core.shard import ShardPlanner
from coldbatch.dataset.rows import Problem, detect_format
from coldbatch.errors import InputError, LineTooLarge, UsageError
from coldbatch.protocol.limits import Limits

if TYPE_CHECKING:
    from coldbatch.dataset.read import Dataset

Reader = Literal["auto", "stdlib", "columnar"]

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
    from coldbatch.dataset.read import from_table, open_dataset  # pyarrow: the columnar path only

    if isinstance(source, str | Path):
        return open_dataset(source, fmt, only=used_columns(spec), views=True)
    return from_table(source)


def used_columns(spec: RequestSpec) -> list[str]:
    """The columns requests are built from: the template's and the id column."""
    return [*spec.template.columns, *([spec.id_column] if spec.id_column else [])]


def check_columns(ds: Dataset | small.SmallSource, spec: RequestSpec) -> None:
    """Raise a UsageError naming a template or id column that `ds` lacks, and the columns it has."""
    option = "--input-column" if spec.input_column and not spec.prompt else "--prompt"
    tpl.check_columns(spec.template, ds.columns, file=ds.name, option=option)
    if spec.id_column and spec.id_column not in ds.columns:
        raise UsageError(
            f"--id-column {spec.id_column!r} is not a column of {ds.name}; available columns: {', '.join(ds.columns)}"
        )


def choose_reader(source: Any, fmt: str | None, spec: RequestSpec) -> Reader:
    """The one place that picks how an input is read: "stdlib" for a CSV, TSV or JSONL file of at most
    `SMALL_INPUT_BYTES` (csv module / orjson, no polars, pyarrow or numpy: issue 11's client weight),
    "columnar" for everything else (Parquet, in-memory tables, larger files, a template without columns).
    Both give byte-identical output (`builder.small`). `COLDBATCH_PREPARE_READER` forces one (benchmarks)."""
    forced = os.environ.get("COLDBATCH_PREPARE_READER", "auto")
    if forced in ("stdlib", "columnar"):
        return "columnar" if forced == "columnar" or not isinstance(source, str | Path) else "stdlib"
    if not isinstance(source, str | Path) or not spec.template.columns:
        return "columnar"
    try:
        small_file = os.path.getsize(source) <= SMALL_INPUT_BYTES
        kind = detect_format(Path(source), fmt)
    except (OSError, UsageError):
        return "columnar"  # it reports the problem in its own words
    return "stdlib" if small_file and kind != "parquet" else "columnar"


def prepare(
    source: Any,
    out: str | Path,
    spec: RequestSpec,
    *,
    limits: Limits | None = None,
    fmt: str | None = None,
    reader: Reader = "auto",
) -> PrepareResult:
    """Turn a dataset (a path, or a pyarrow/pandas/polars table) into shards + manifest.json in `out`.

    `reader`: "auto" (`choose_reader`), or force "stdlib" / "columnar" (tests compare the two).

    Raises:
        UsageError: a template column or the id column is missing.
        InputError: the input cannot be read, or it repeats ids under `on_duplicate_id="error"`.
    """
    lim = limits or Limits()
    out = Path(out)
    manifest = None
    if (reader if reader != "auto" else choose_reader(source, fmt, spec)) == "stdlib":
        src = small.open_source(source, fmt)
        check_columns(src, spec)
        manifest = _staged(out, lambda tmp: _build_small(src, spec, lim, tmp))
    if manifest is None:
        ds = _dataset(source, fmt, spec)
        check_columns(ds, spec)
        manifest = _staged(out, lambda tmp: _build_all(ds, spec, lim, tmp))
    assert manifest is not None
    logger.info("prepared", extra={"action": "prepared", "out": str(out), "requests": manifest["totals"]})
    return PrepareResult(out.resolve(), manifest)


def _staged(out: Path, build: Callable[[Path], dict[str, Any] | None]) -> dict[str, Any] | None:
    """Build into a staging folder and swap it in; on an error (or None: nothing built) `out` stays as it was."""
    tmp = write.staging_folder(out)
    try:
        manifest = build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if manifest is None:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    write.publish(tmp, out)
    return manifest


def _build_small(src: small.SmallSource, spec: RequestSpec, lim: Limits, tmp: Path) -> dict[str, Any] | None:
    try:
        built = small.build_into(src, spec, lim, tmp)
    except LineTooLarge as exc:  # pragma: no cover - guarded by max_line_bytes
        raise InputError(str(exc)) from exc
    if built is None:
        return None
    manifest = _manifest(
        (src.name, src.columns, src.problems), spec, lim, built.shards, built.rows, built.rejected, built.renamed
    )
    write.write_json(tmp / write.MANIFEST, manifest)
    return manifest


def _build_all(ds: Dataset, spec: RequestSpec, lim: Limits, tmp: Path) -> dict[str, Any]:
    from coldbatch.builder.build import Builder  # polars: the columnar path only

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
        errors = builder.ids.errors
        ids = _ids_of(ds, spec, {row for row, _ in errors[:20]})
        raise InputError(repeats_message(ds.name, spec, errors, builder.ids.total_repeats, ids))
    if builder.rejects:
        write.write_rejects(tmp / write.REJECTS, builder.rejects)
    renamed = builder.ids.total_repeats if builder.ids else 0
    described = (ds.name, ds.columns, ds.problems)
    manifest = _manifest(described, spec, lim, writer.shards, rows, builder.rejected, renamed)
    write.write_json(tmp / write.MANIFEST, manifest)
    return manifest


def _ids_of(ds: Dataset, spec: RequestSpec, wanted: set[int]) -> dict[int, str]:
    """The id column's values at rows `wanted`, read back from the file (the builder keeps only hashes)."""
    from coldbatch.dataset.read import open_dataset

    ids: dict[int, str] = {}
    again = open_dataset(ds.name, ds.opened_as or ds.format) if ds.format is not None else None
    if again is not None and spec.id_column and wanted:
        for start, batch in again.batches():
            if start + batch.num_rows < min(wanted):
                continue
            for i, cid in enumerate(batch.column(spec.id_column).to_pylist()):
                if start + i + 1 in wanted:
                    ids[start + i + 1] = cid
            if start + batch.num_rows >= max(wanted):
                break
    return ids


def repeats_message(
    name: str, spec: RequestSpec, repeats: list[tuple[int, int]], total: int, ids: dict[int, str]
) -> str:
    """Name each repeating row, its id (`ids`: row -> id), and the row it repeats."""
    lines = [f"  {name}: row {row}: id {ids.get(row, '?')!r} repeats row {first}" for row, first in repeats[:20]]
    more = f"\n  … and {total - 20} more" if total > 20 else ""
    return (
        f"{name}: {total} row(s) repeat an earlier id in column {spec.id_column!r}, so their results "
        f"could not be told apart:\n"
        + "\n".join(lines)
        + more
        + "\nFix the data, or pass --on-duplicate-id suffix to send them as 'ID~2', 'ID~3', …"
    )


def _manifest(
    described: tuple[str, list[str], list[Problem]],
    spec: RequestSpec,
    lim: Limits,
    shards: list[write.ShardInfo],
    rows: int,
    rejected: int,
    repeats: int,
) -> dict[str, Any]:
    """manifest.json: `described` is the input's (name, columns, repaired cells); `repeats`: repeated ids seen."""
    name, columns, problems = described
    return {
        "format": write.MANIFEST_FORMAT,
        "created_by": f"coldbatch {__version__}",
        "input": {"name": Path(name).name, "rows": rows, "columns": columns},
        "request": spec.describe(),
        "limits": {"max_requests": lim.max_requests, "max_bytes": lim.max_bytes, "max_line_bytes": lim.max_line_bytes},
        "shards": [s.to_json() for s in shards],
        "totals": {
            "rows": rows,
            "requests": sum(s.requests for s in shards),
            "bytes": sum(s.bytes for s in shards),
            "shards": len(shards),
            "rejected": rejected,
            "renamed_ids": repeats if spec.on_duplicate_id == "suffix" else 0,
        },
        "rejects": write.REJECTS if rejected else None,
        "repaired_cells": [{"row": p.row, "column": p.column, "message": p.message} for p in problems[:1000]],
    }
