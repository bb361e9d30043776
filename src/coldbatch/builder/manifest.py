"""Reading a prepared folder back: its manifest and shard paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from coldbatch.builder.write import MANIFEST
from coldbatch.errors import InputError


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "shards" not in data:
        raise InputError(f"{path}: not a coldbatch manifest (no 'shards')")
    return data


def shard_paths(folder: Path) -> list[Path]:
    """The shards a folder holds: those its manifest lists, else every *.jsonl in name order."""
    manifest = read_manifest(folder)
    if manifest is not None:
        return [folder / s["path"] for s in manifest["shards"]]
    found = sorted(p for p in folder.glob("*.jsonl") if p.name != "rejects.jsonl")
    if not found:
        raise InputError(f"{folder}: holds no manifest.json and no *.jsonl files")
    return found
