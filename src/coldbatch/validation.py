"""`validate_file()`: lint a batch input file on disk with the rules of `core.validate`, streaming."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

from coldbatch.builder.manifest import shard_paths
from coldbatch.core.validate import FileValidator, Report
from coldbatch.errors import InputError
from coldbatch.protocol.limits import Limits


def iter_lines(path: Path) -> Iterator[bytes]:
    """Physical lines of a file as bytes, without `\\n` (or `\\r\\n`), in O(longest line) memory.

    The same lines as `core.validate.split_lines` gives for the whole file's bytes (a final `\\r` with
    no `\\n` after it is dropped too), so a file validates alike from disk and from memory.
    """
    with path.open("rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            yield raw[:-1] if raw.endswith(b"\r") else raw


def validate_file(path: str | Path, *, endpoint: str | None = None, models: Collection[str] | None = None,
                  limits: Limits | None = None, max_errors: int = 1000) -> Report:
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
