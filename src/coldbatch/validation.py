"""`validate_file()`: lint a batch input file on disk with the rules of `core.validate`, streaming.

`iter_lines` (the JSONL reader, now in `coldbatch.jsonl`) is still importable from here."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from coldbatch.builder.manifest import shard_paths
from coldbatch.core.validate import FileValidator, Report
from coldbatch.errors import InputError
from coldbatch.jsonl import iter_lines
from coldbatch.protocol.limits import Limits

__all__ = ["expand_paths", "iter_lines", "validate_file"]


def validate_file(
    path: str | Path,
    *,
    endpoint: str | None = None,
    models: Collection[str] | None = None,
    limits: Limits | None = None,
    max_errors: int = 1000,
) -> Report:
    """Check one batch input file; returns a `Report` listing every broken rule (capped at max_errors).

    Raises:
        InputError: the file cannot be opened.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    v = FileValidator(file=str(p), endpoint=endpoint, models=models, limits=limits, max_errors=max_errors)
    try:
        v.feed_many(iter_lines(p))
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc}") from exc
    return v.finish(size=p.stat().st_size)


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; a folder stands for its shards (manifest order) or its *.jsonl files."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(shard_paths(p))
        else:
            out.append(p)
    return out
