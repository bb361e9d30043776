"""The send plan: which distinct questions a job actually sends, and which rows share each answer.

Rows whose requests are the same question (`core.canonical.request_key`: same endpoint and body up
to key order and whitespace) are sent once; the answer fans out to every row that asked. Questions
already answered in the result cache are not sent at all. The plan is written as request files whose
`custom_id` is the question's key, so results come back keyed by question, and as `row_keys`
(row custom_id → key) in the ledger, which OUTPUT joins through.

Dedup is off with `dedup=False` (`--no-dedup`), and by default for sampling requests (temperature or
top_p above zero, n > 1): then every row is sent as its own request, under its own custom_id.
Seen-question tracking keeps 64-bit key prefixes (8 bytes per question; a false "already seen" needs
a 64-bit collision, ~1e-7 for 2.4 M questions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from coldbatch.builder.build import _SeenHashes
from coldbatch.core.canonical import request_key
from coldbatch.protocol.limits import Limits
from coldbatch.runner import ledger as LG
from coldbatch.runner.cache import ResultCache
from coldbatch.validation import iter_lines

CHUNK = 8192


@dataclass
class PlanStats:
    requests: int = 0
    distinct: int = 0
    cache_hits: int = 0
    to_send: int = 0
    not_cached: int = 0  # --cache-only: distinct questions left unanswered

    def to_json(self) -> dict[str, int]:
        return {"requests": self.requests, "distinct_requests": self.distinct, "cache_hits": self.cache_hits,
                "requests_to_send": self.to_send, "not_cached": self.not_cached}


@dataclass
class _SendWriter:
    folder: Path
    limits: Limits
    units: list[dict[str, Any]] = field(default_factory=list)
    _fh: IO[bytes] | None = None
    _hash: Any = None
    _cur: dict[str, Any] | None = None

    def add(self, line: bytes, model: str) -> None:
        data = line + b"\n"
        cur = self._cur
        if cur is None or cur["requests"] >= self.limits.max_requests or \
                cur["bytes"] + len(data) > self.limits.max_bytes or cur["model"] != model:
            self.close()
            path = self.folder / f"send-{len(self.units) + 1:05d}.jsonl"
            self._cur = cur = {"round": 1, "shard": len(self.units) + 1, "path": str(path), "requests": 0,
                               "bytes": 0, "sha256": "", "model": model}
            self.units.append(cur)
            self._fh = path.open("wb")
            self._hash = hashlib.sha256()
        assert self._fh is not None
        self._fh.write(data)
        self._hash.update(data)
        cur["requests"] += 1
        cur["bytes"] += len(data)

    def close(self) -> None:
        if self._fh is not None and self._cur is not None:
            self._fh.close()
            self._cur["sha256"] = self._hash.hexdigest()
            self._fh = None


def _requests(shard_paths: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    for p in shard_paths:
        for line in iter_lines(p):
            if line.strip():
                req = orjson.loads(line)
                yield req["custom_id"], req


def plan_sends(shard_paths: list[Path], folder: Path, ledger: LG.Ledger, job_id: str, *, limits: Limits,
               cache: ResultCache | None, cache_only: bool = False) -> tuple[list[dict[str, Any]], PlanStats]:
    """Write the send files of a deduplicated job and record row → question keys. Idempotent: a rerun
    after a crash rewrites the same files and mappings."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = _SendWriter(folder, limits)
    seen = _SeenHashes()
    stats = PlanStats()
    chunk: list[tuple[str, str, dict[str, Any]]] = []

    def flush() -> None:
        if not chunk:
            return
        ledger.add_row_keys(job_id, [(cid, key) for cid, key, _ in chunk])
        k64 = np.array([int(key[2:18], 16) for _, key, _ in chunk], dtype=np.uint64)
        uniq, first = np.unique(k64, return_index=True)
        new = ~seen.contains(uniq)
        seen.add(uniq[new])
        fresh = [chunk[i] for i in sorted(first[new].tolist())]  # first occurrences, in row order
        stats.distinct += len(fresh)
        hits = cache.get_many([key for _, key, _ in fresh]) if cache is not None else {}
        if hits:
            ledger.record_cached(job_id, [LG.Outcome(k, "ok", e.content) for k, e in hits.items()])
        stats.cache_hits += len(hits)
        unanswered = []
        for _, key, req in fresh:
            if key in hits:
                continue
            if cache_only:
                unanswered.append(LG.Outcome(key, "failed", None, "not_cached",
                                             "--cache-only: no cached answer for this request"))
                continue
            req["custom_id"] = key
            writer.add(orjson.dumps(req), str(req["body"].get("model", "")))
            stats.to_send += 1
        if unanswered:
            ledger.record_cached(job_id, unanswered)
            stats.not_cached += len(unanswered)
        chunk.clear()

    for cid, req in _requests(shard_paths):
        stats.requests += 1
        chunk.append((cid, request_key(req["url"], req["body"]), req))
        if len(chunk) >= CHUNK:
            flush()
    flush()
    writer.close()
    return writer.units, stats
