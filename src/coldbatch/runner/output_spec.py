"""What OUTPUT holds and where it goes, without the columnar stack: names, checks, format, label, temp file.

Both OUTPUT writers use these (output.py, the columnar join for Parquet, --examples and large inputs, and
output_rows.py, the stdlib join of a small input), and so do the checks made before a job starts
(cli/jobs.py, job.py, runner/preflight.py): none of them needs polars, pyarrow or numpy, so importing them
costs a small run nothing (issue 11, client weight).

These names never depend on the input's columns (scripts read them): `prefix` (`--output-prefix`) renames
them all alike, and an input column with the same name as one of them is refused before anything is sent
(`check_columns`), naming the columns and the flag. Earlier versions prefixed them with `cb_` only when the
input happened to have one of the names, which broke a scoring script (issue 16).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from coldbatch.builder.small import open_source
from coldbatch.builder.spec import RequestSpec
from coldbatch.dataset.rows import detect_format
from coldbatch.errors import UsageError
from coldbatch.protocol import limits as L

ADDED = ("custom_id", "response", "label", "confidence", "error", "attempts", "prompt_tokens", "completion_tokens")
LABEL_ONLY = ("label", "confidence")  #: added only to a --labels job's OUTPUT
EMBEDDING = "embedding"  #: an embeddings job's vector column, in place of `response` (see vectors.py)
#: OUTPUT's formats by extension (the input reader's names for them)
KINDS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
KINDS |= {".parquet": "parquet", ".pq": "parquet"}


def added_columns(
    spec: RequestSpec, labels: tuple[str, ...] = (), prefix: str = "", classified: bool = False
) -> list[str]:
    """The names of the columns OUTPUT adds to the input's, in order (see the module docstring)."""
    names = []
    for c in ADDED:
        if c in LABEL_ONLY and not (labels or spec.labels):
            continue
        embedding = c == "response" and spec.endpoint == L.EMBEDDINGS and not classified
        names.append(prefix + (EMBEDDING if embedding else c))
    names += [prefix + name for name in (spec.schema or {}).get("properties", {})]
    return names


def check_columns(input_columns: list[str], added: list[str], where: str) -> None:
    """Refuse a clash between the input's columns and OUTPUT's added ones (a stated rule, not a silent rename)."""
    clash = [c for c in added if c in input_columns]
    if clash:
        raise UsageError(
            f"{where}: the input already has column(s) {', '.join(clash)}, which OUTPUT adds; pass "
            f"--output-prefix (e.g. --output-prefix cb_ names them {', '.join('cb_' + c for c in clash[:3])}, ...) "
            f"or rename the input's column(s)"
        )
    dupes = sorted({c for c in added if added.count(c) > 1})
    if dupes:
        raise UsageError(
            f"{where}: OUTPUT would have column(s) {', '.join(dupes)} twice (a --schema property "
            "named like an added column); pass --output-prefix"
        )


def output_kind(out: Path) -> str:
    """OUTPUT's format, from its extension (checked before a job starts: not after it was paid for)."""
    kind = KINDS.get(out.suffix.lower())
    if kind is None:
        raise UsageError(f"--out {out}: use a .csv, .tsv, .jsonl or .parquet name")
    return kind


def input_columns(input_path: Path, fmt: str | None) -> list[str]:
    """The input's column names: a CSV/TSV header or a JSONL file's first fields read with the stdlib
    (`builder.small`, the same checks and errors as the Arrow reader), a Parquet schema with pyarrow."""
    if input_path.is_file() and detect_format(input_path, fmt) != "parquet":
        return open_source(input_path, fmt).columns
    from coldbatch.dataset.read import open_dataset

    return open_dataset(input_path, fmt).columns


def parse_label(content: str | None, labels: tuple[str, ...]) -> str | None:
    """The label a --labels answer chose (its text, or the `label` field of its JSON), None if not one of them."""
    if not content or not labels:
        return None
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        value = content.strip()
    if isinstance(value, dict):
        value = value.get("label")
    return value if isinstance(value, str) and value in labels else None


@dataclass(frozen=True)
class Classified:
    """Labels given by a classifier rather than by the answers themselves (runner/examples.py)."""

    labels: tuple[str, ...]
    answers: dict[str, tuple[str, float]]  #: question key (the custom_id sent) -> (label, confidence)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def part_path(path: Path) -> Path:
    """The temporary file OUTPUT is written to before it is swapped into place; removes the temporary files
    of earlier writers of `path` that died (a crash while writing OUTPUT) first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        if p.name.startswith(prefix) and p.name.endswith(".part"):
            pid = p.name[len(prefix) : -len(".part")]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                p.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.part")


def publish(tmp: Path, path: Path, done: bool) -> None:
    """Swap a finished temporary file into place atomically; an unfinished one is removed (OUTPUT untouched)."""
    if not done:
        tmp.unlink(missing_ok=True)
        return
    if not tmp.exists():
        tmp.touch()
    tmp.replace(path)
