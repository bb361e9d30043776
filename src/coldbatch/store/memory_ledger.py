"""In-memory `LedgerStore` and `CacheStore`: the client's state without a file.

Same rules as the SQLite ledger and cache (compare-and-set unit and job states with events, results
upserted so a success is never overwritten and tokens add up, all-or-nothing unit planning), so the
contract suite (tests/store/) holds both to the same behaviour. Nothing survives the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from coldbatch.core.unit_state import JobStatus, UnitState, job_allowed_from, unit_allowed_from
from coldbatch.store.ledger import JOB_FIELDS, UNIT_FIELDS, json_column
from coldbatch.store.records import Entry, JobRecord, Outcome, Row, UnitRecord, job_status

__all__ = ["MemoryCache", "MemoryLedger"]

_UNIT_DEFAULTS: dict[str, Any] = {
    "try": 1,
    "intent_at": None,
    "file_id": None,
    "batch_id": None,
    "batch_status": None,
    "output_file_id": None,
    "error_file_id": None,
    "detail": None,
    "remote_cleaned": 0,
}


class MemoryLedger:
    """Dicts behind one lock; rows shaped as the SQLite ledger's."""

    def __init__(self) -> None:
        self.path: Path | None = None  #: nowhere on disk
        self._lock = threading.RLock()
        self._jobs: dict[str, Row] = {}
        self._units: dict[int, Row] = {}
        self._results: dict[tuple[str, str], Row] = {}
        self._row_keys: dict[tuple[str, str], str] = {}
        self._rescued: set[tuple[str, str]] = set()
        self._unit_events: list[tuple[int, str | None, str]] = []
        self._job_events: list[tuple[str, str | None, str]] = []
        self._next_unit = 1

    def close(self) -> None:
        pass

    # -- jobs -----------------------------------------------------------------------------------------
    def create_job(self, job_id: str, input_path: str, output_path: str, options: Mapping[str, Any]) -> None:
        now = int(time.time())
        with self._lock:
            if job_id in self._jobs:
                raise ValueError(f"job {job_id!r} exists already")
            self._jobs[job_id] = {
                "id": job_id,
                "created_at": now,
                "status": JobStatus.PREPARING.value,
                "input_path": input_path,
                "output_path": output_path,
                "options": orjson.dumps(dict(options)).decode(),
                "estimate": None,
                "report": None,
                "updated_at": now,
            }
            self._job_events.append((job_id, None, JobStatus.PREPARING.value))

    def job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._jobs.get(job_id)
            return None if row is None else JobRecord.of(row)

    def job_status(self, job_id: str) -> JobStatus | None:
        with self._lock:
            row = self._jobs.get(job_id)
            return None if row is None else job_status(job_id, row["status"])

    def jobs(self) -> list[JobRecord]:
        with self._lock:
            rows = sorted(self._jobs.values(), key=lambda j: (-j["created_at"], j["id"]))
            return [JobRecord.of(j) for j in rows]

    def set_job(self, job_id: str, **fields: Any) -> bool:
        unknown = set(fields) - JOB_FIELDS
        if unknown:
            raise ValueError(f"set_job: no job field {sorted(unknown)}")
        to = JobStatus(fields.pop("status")) if "status" in fields else None
        with self._lock:
            if to is not None and not self.move_job(job_id, to):
                return False
            if fields and job_id in self._jobs:
                self._jobs[job_id].update(
                    {k: json_column(v) for k, v in fields.items()},
                    updated_at=int(time.time()),
                )
        return True

    def move_job(self, job_id: str, to: JobStatus) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or JobStatus(job["status"]) not in job_allowed_from(to):
                return False
            self._job_events.append((job_id, job["status"], to.value))
            job.update(status=to.value, updated_at=int(time.time()))
            return True

    def job_events(self, job_id: str) -> list[tuple[str | None, str]]:
        with self._lock:
            return [(frm, to) for jid, frm, to in self._job_events if jid == job_id]

    # -- units ----------------------------------------------------------------------------------------
    def add_units(self, job_id: str, units: Iterable[dict[str, Any]]) -> None:
        now = int(time.time())
        rows = [
            {
                "job_id": job_id,
                "round": u["round"],
                "shard": u["shard"],
                **_UNIT_DEFAULTS,
                "path": u["path"],
                "requests": u["requests"],
                "bytes": u["bytes"],
                "sha256": u["sha256"],
                "model": u["model"],
                "tokens": u.get("tokens", 0),
                "state": UnitState.PLANNED.value,
                "updated_at": now,
            }
            for u in units
        ]
        with self._lock:
            have = {(u["job_id"], u["round"], u["shard"]) for u in self._units.values()}
            for r in rows:
                if (job_id, r["round"], r["shard"]) in have:
                    continue
                have.add((job_id, r["round"], r["shard"]))
                uid, self._next_unit = self._next_unit, self._next_unit + 1
                self._units[uid] = {"id": uid, **r}
                self._unit_events.append((uid, None, UnitState.PLANNED.value))

    def units(self, job_id: str, states: Sequence[str] | None = None) -> list[UnitRecord]:
        wanted = {str(s) for s in states} if states else None
        with self._lock:
            return [
                UnitRecord.of(u)
                for uid, u in sorted(self._units.items())
                if u["job_id"] == job_id and (wanted is None or u["state"] in wanted)
            ]

    def max_round(self, job_id: str) -> int:
        with self._lock:
            return max((u["round"] for u in self._units.values() if u["job_id"] == job_id), default=0)

    def move_unit(self, unit_id: int, to: UnitState, **fields: Any) -> bool:
        unknown = set(fields) - UNIT_FIELDS
        if unknown:
            raise ValueError(f"move_unit: no unit field {sorted(unknown)}")
        with self._lock:
            u = self._units.get(unit_id)
            if u is None or UnitState(u["state"]) not in unit_allowed_from(to):
                return False
            self._unit_events.append((unit_id, u["state"], to.value))
            u.update(fields, state=to.value, updated_at=int(time.time()))
            return True

    def set_batch_status(self, unit_id: int, status: str | None) -> None:
        with self._lock:
            if unit_id in self._units:
                self._units[unit_id].update(batch_status=status, updated_at=int(time.time()))

    def mark_cleaned(self, unit_id: int) -> None:
        with self._lock:
            if unit_id in self._units:
                self._units[unit_id].update(remote_cleaned=1, updated_at=int(time.time()))

    def unit_events(self, unit_id: int) -> list[tuple[str | None, str]]:
        with self._lock:
            return [(frm, to) for uid, frm, to in self._unit_events if uid == unit_id]

    # -- results --------------------------------------------------------------------------------------
    def collect(
        self,
        unit: UnitRecord,
        outcomes: Iterable[Outcome],
        *,
        state: UnitState = UnitState.COLLECTED,
        **unit_fields: Any,
    ) -> dict[str, int]:
        """All or nothing: the outcomes are read in full before the unit moves or any result is written."""
        counts = {"ok": 0, "retry": 0, "failed": 0}
        with self._lock:
            u = self._units.get(unit.id)
            if u is None or UnitState(u["state"]) not in unit_allowed_from(UnitState(state)):
                return counts
            items = list(outcomes)
            for o in items:
                counts[o.state] += 1
            if not self.move_unit(unit.id, UnitState(state), **unit_fields):
                return {"ok": 0, "retry": 0, "failed": 0}
            for o in items:
                self._upsert(unit.job_id, o, unit.round)
        return counts

    def _upsert(self, job_id: str, o: Outcome, attempts: int) -> None:
        old = self._results.get((job_id, o.custom_id))
        if old is not None and old["state"] == "ok":
            return
        row = {
            "job_id": job_id,
            "custom_id": o.custom_id,
            "state": o.state,
            "attempts": attempts,
            "content": o.content,
            "error_code": o.error_code,
            "error_message": o.error_message,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
            "cached_tokens": o.cached_tokens,
            "confidence": o.confidence,
        }
        if old is not None:
            for col in ("prompt_tokens", "completion_tokens", "cached_tokens"):
                row[col] += old[col]
        self._results[(job_id, o.custom_id)] = row

    def record_results(self, job_id: str, outcomes: Sequence[Outcome], *, attempts: int = 1) -> None:
        with self._lock:
            for o in outcomes:
                self._upsert(job_id, o, attempts)

    def record_cached(self, job_id: str, outcomes: Iterable[Outcome]) -> None:
        with self._lock:
            for o in outcomes:
                self._results.setdefault(
                    (job_id, o.custom_id),
                    {
                        "job_id": job_id,
                        "custom_id": o.custom_id,
                        "state": o.state,
                        "attempts": 0,
                        "content": o.content,
                        "error_code": o.error_code,
                        "error_message": o.error_message,
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "cached_tokens": 0,
                        "confidence": o.confidence,
                    },
                )

    def add_rescued(self, job_id: str, ids: Sequence[str]) -> None:
        with self._lock:
            self._rescued.update((job_id, i) for i in ids)

    def rescued_summary(self, job_id: str) -> dict[str, int]:
        with self._lock:
            hits = [self._results[k] for k in self._rescued if k[0] == job_id and k in self._results]
            rows = sum(1 for (jid, _), key in self._row_keys.items() if jid == job_id and (jid, key) in self._rescued)
        return {
            "requests": len(hits),
            "succeeded": sum(r["state"] == "ok" for r in hits),
            "rows": rows or len(hits),
            "prompt_tokens": sum(r["prompt_tokens"] for r in hits),
            "completion_tokens": sum(r["completion_tokens"] for r in hits),
        }

    def _job_results(self, job_id: str) -> list[Row]:
        return [r for (jid, _), r in sorted(self._results.items()) if jid == job_id]

    def answered_ids(self, job_id: str) -> set[str]:
        with self._lock:
            return {r["custom_id"] for r in self._job_results(job_id) if r["state"] in ("ok", "failed")}

    def retry_ids(self, job_id: str) -> set[str]:
        with self._lock:
            return {r["custom_id"] for r in self._job_results(job_id) if r["state"] == "retry"}

    def give_up(self, job_id: str, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                if (job_id, i) in self._results:
                    self._results[(job_id, i)]["state"] = "failed"

    def add_row_keys(self, job_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            for cid, key in pairs:
                self._row_keys.setdefault((job_id, cid), key)

    def rows_per_key(self, job_id: str) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for (jid, _), key in self._row_keys.items():
                if jid == job_id:
                    out[key] = out.get(key, 0) + 1
        return out

    def keyed(self, job_id: str) -> bool:
        with self._lock:
            return any(jid == job_id for jid, _ in self._row_keys)

    def results_for(self, job_id: str, ids: Sequence[str], *, keyed: bool = False) -> dict[str, Row]:
        out: dict[str, Row] = {}
        with self._lock:
            for cid in ids:
                key = self._row_keys.get((job_id, cid)) if keyed else cid
                r = self._results.get((job_id, key)) if key is not None else None
                if r is not None:
                    out[cid] = {"row_id": cid, **r}
        return out

    def row_counts(self, job_id: str) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for (jid, _), key in self._row_keys.items():
                r = self._results.get((jid, key)) if jid == job_id else None
                if r is not None:
                    out[r["state"]] = out.get(r["state"], 0) + 1
        return out

    def summary(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            rows = self._job_results(job_id)
        codes: dict[str | None, int] = {}
        for r in rows:
            if r["state"] == "failed":
                codes[r["error_code"]] = codes.get(r["error_code"], 0) + 1
        return {
            "results": len(rows),
            "succeeded": sum(r["state"] == "ok" for r in rows),
            "failed": sum(r["state"] == "failed" for r in rows),
            "pending_retry": sum(r["state"] == "retry" for r in rows),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "completion_tokens": sum(r["completion_tokens"] for r in rows),
            "cached_tokens": sum(r["cached_tokens"] for r in rows),
            "retried_rows": sum(r["attempts"] > 1 for r in rows),
            "failed_by_code": codes,
        }

    def iter_results(self, job_id: str) -> Iterator[Row]:
        with self._lock:
            rows = [dict(r) for r in self._job_results(job_id)]
        yield from rows


class MemoryCache:
    """Entries in a dict, with the same age and count limits as the SQLite cache."""

    def __init__(self, *, max_entries: int | None = None, max_age_days: float | None = None) -> None:
        self.max_entries = max_entries
        self.max_age = max_age_days * 86400 if max_age_days else None
        self.corrupt_ignored = 0
        self._entries: dict[str, tuple[Entry, int]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        pass

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        oldest = int(time.time() - self.max_age) if self.max_age else 0
        with self._lock:
            return {
                k: e for k in keys if (hit := self._entries.get(k)) is not None and hit[1] >= oldest for e in (hit[0],)
            }

    def put_many(self, entries: Iterable[Entry]) -> int:
        now = int(time.time())
        items = list(entries)
        with self._lock:
            for e in items:
                self._entries[e.key] = (e, now)
        return len(items)

    def prune(self) -> int:
        removed = 0
        with self._lock:
            if self.max_age:
                cut = int(time.time() - self.max_age)
                old = [k for k, (_, at) in self._entries.items() if at < cut]
                removed += len(old)
                for k in old:
                    del self._entries[k]
            if self.max_entries is not None:
                order = sorted(self._entries.items(), key=lambda kv: (-kv[1][1], kv[0]))
                for k, _ in order[self.max_entries :]:
                    del self._entries[k]
                    removed += 1
        return removed

    def stats(self) -> dict[str, object]:
        with self._lock:
            ats = [at for _, at in self._entries.values()]
            size = sum(len(e.content) for e, _ in self._entries.values())
        return {
            "path": "(memory)",
            "entries": len(ats),
            "content_bytes": size,
            "oldest": min(ats, default=None),
            "newest": max(ats, default=None),
            "file_bytes": 0,
        }

    def clear(self) -> int:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
        return n
