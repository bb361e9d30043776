"""Anthropic Message Batches through the official `anthropic` SDK, behind the runner's `BatchProvider` protocol.

Anthropic has no file upload: a batch carries its requests inline (≤ 100,000 requests, ≤ 256 MB). So
`upload` is local and free (the "file id" is `local:<path of the unit's request file>`), and `create_batch`
translates each OpenAI-shaped line (`translate.to_anthropic`) and sends them all in one POST. Results come back
as one JSONL stream; `download` rewrites it as OpenAI batch output lines under the job's own custom_ids
(`translate.from_anthropic`), so the runner classifies and joins them like any other provider's.

Exactly-once without metadata. An Anthropic batch has no metadata or idempotency key, and shows nothing of its
requests until it has ended. What identifies a unit's batch:
- every custom_id sent is `PREFIX_<id>` (`translate.wire_id`), PREFIX = "cb" + 10 hex digits of the unit's tag
  (job, unit, try, round, sha256 of the file): once the batch has ended, its results prove whose it is;
- a small durable record per batch this coldbatch home created or adopted (`<state_dir>/<batch id>.json`:
  the unit's file, prefix, tag), written before the batch id reaches the ledger.
After a crash between the create call and the ledger's commit, `find_batch` lists the batches created since
the intent (minus 2 minutes of clock skew), drops those recorded for any unit (claimed) and those proven
foreign, and adopts the oldest whose request total equals the unit's. When an adopted batch ends, `retrieve`
reads its first result: our prefix proves it ours; another proves it foreign (recorded so, never read into
OUTPUT, deleted or adopted again) and the unit's own batch is looked for again the same way and followed
(the record redirects; the ledger keeps the first id), so a foreign batch costs time, not a second payment.
What remains (README, Providers): a unit waits for a foreign same-size batch to end before its own is found,
and a batch of ours invisible in the list (clock skew over 2 minutes) would be created again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import orjson

from coldbatch.providers import translate as T
from coldbatch.providers.base import ProviderError, send_once
from coldbatch.validation import iter_lines

#: failures after which a POST may or may not have taken effect (or surely did not, and may succeed later)
_TRANSIENT = (
    anthropic.APIConnectionError,
    anthropic.InternalServerError,
    anthropic.RateLimitError,
    anthropic.ConflictError,
)
_STATUS = {"in_progress": "in_progress", "canceling": "cancelling"}
#: an errored request's error type -> the HTTP status Anthropic gives it (outcomes.py classifies by status)
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
    "billing_error": 402,
    "timeout_error": 504,
}
LOCAL = "local:"


def unit_prefix(tag: dict[str, str]) -> str:
    """The custom_id prefix of one unit's batch: stable for the unit's tag, different for any other unit or try."""
    return "cb" + hashlib.sha256(orjson.dumps(tag, option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]


def _epoch(value: Any) -> int:
    return int(value.timestamp()) if isinstance(value, datetime) else int(value or 0)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)


class AnthropicProvider:
    """See the module docstring. `state_dir` holds one small JSON record per batch (see `_remember`)."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        state_dir: Path,
        max_retries: int = 5,
        timeout: float = 600.0,
    ) -> None:
        if base_url and base_url.rstrip("/").endswith("/v1"):  # the SDK appends /v1/... itself
            base_url = base_url.rstrip("/")[:-3]
        self.client = anthropic.AsyncAnthropic(
            base_url=base_url, api_key=api_key or "not-needed", max_retries=max_retries, timeout=timeout
        )
        self._post = self.client.with_options(max_retries=0)  # non-idempotent: see OpenAIProvider
        self.name = str(self.client.base_url)
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)

    # -- the unit's request file stays local ---------------------------------------------------------------
    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        """Nothing to upload (requests go inline); the id names the local file `create_batch` will read."""
        return {"id": LOCAL + str(path.resolve()), "filename": filename, "bytes": path.stat().st_size}

    async def find_file(self, filename: str, size: int, not_before: int) -> dict[str, Any] | None:
        return None  # the "upload" is local and free: doing it again costs nothing

    async def delete_file(self, file_id: str) -> None:
        """A result "file" is the ended batch itself: deleted on Anthropic once collected (never a foreign one)."""
        if file_id.startswith(LOCAL):
            return
        rec = self._record(file_id)
        if rec is None or rec.get("foreign"):
            return
        with contextlib.suppress(anthropic.NotFoundError):
            await self.client.messages.batches.delete(file_id)
        (self.state_dir / f"{file_id}.json").unlink(missing_ok=True)

    # -- batches ------------------------------------------------------------------------------------------
    def _requests(self, path: Path, prefix: str) -> list[dict[str, Any]]:
        reqs = []
        for n, line in enumerate(iter_lines(path), 1):
            if not line.strip():
                continue
            rec = orjson.loads(line)
            try:
                params = T.to_anthropic(rec["body"])
            except T.Untranslatable as exc:
                raise T.Untranslatable(f"{path}:{n}: {exc}") from exc
            reqs.append({"custom_id": T.wire_id(rec["custom_id"], prefix), "params": params})
        return reqs

    async def create_batch(
        self, file_id: str, endpoint: str, metadata: dict[str, str], completion_window: str
    ) -> dict[str, Any]:
        if not endpoint.endswith("/chat/completions"):
            raise ProviderError(f"Anthropic Message Batches only answer chat requests, not {endpoint}")
        path = Path(file_id.removeprefix(LOCAL))
        prefix = unit_prefix(metadata)
        reqs = self._requests(path, prefix)
        b = await send_once(
            self._post.messages.batches.create(requests=reqs),  # type: ignore[arg-type]
            f"batch create for {path.name}",
            _transient,
        )
        self._remember(b.id, path, prefix, metadata)
        return self._normal(b.model_dump())

    async def find_batch(
        self, file_id: str, tag: dict[str, str], requests: int, not_before: int
    ) -> dict[str, Any] | None:
        """The batch a create call for this unit made before a crash, if any: see the module docstring."""
        prefix, path = unit_prefix(tag), Path(file_id.removeprefix(LOCAL))
        found = await self._candidate(prefix, requests, not_before)
        if found is None:
            return None
        rec = self._record(found["id"])
        if rec is None:  # adopted on its size alone: proven (or not) by its results' prefix when it ends
            self._remember(found["id"], path, prefix, tag, adopted={"requests": requests, "not_before": not_before})
            rec = self._record(found["id"])
        return self._normal(found, rec)

    async def _candidate(self, prefix: str, requests: int, not_before: int) -> dict[str, Any] | None:
        """The batch recorded for this prefix, else the oldest unrecorded one of `requests` requests created since
        `not_before` (the list is newest first)."""
        oldest = None
        async for b in self._list():
            if _epoch(b["created_at"]) < not_before:
                break
            rec = self._record(b["id"])
            if rec is not None:
                if rec.get("prefix") == prefix and not rec.get("foreign"):
                    return b  # already recorded for this very unit
                continue  # claimed by another unit, or proven foreign
            if sum(int(v or 0) for v in b["request_counts"].values()) == requests:
                oldest = b
        return oldest

    async def _proven(self, batch_id: str, rec: dict[str, Any]) -> str:
        """An adopted batch that has ended: itself when its first result carries the unit's prefix; else it is
        recorded foreign and the unit's own batch is looked for again (the id to follow from now on, or
        `batch_id` when there is none: its empty results then send the rows again)."""
        async with self.client.messages.batches.with_streaming_response.results(batch_id) as resp:
            first = None
            async for line in resp.iter_lines():
                if line.strip():
                    first = orjson.loads(line)["custom_id"]
                    break
        path, prefix, tag, adopted = Path(rec["path"]), rec["prefix"], rec.get("tag") or {}, rec["adopted"]
        if first is None or str(first).startswith(prefix + "_"):
            self._remember(batch_id, path, prefix, tag)  # proven ours
            return batch_id
        self._remember(batch_id, path, prefix, tag, foreign=True)  # first: the search below must skip it
        found = await self._candidate(prefix, adopted["requests"], adopted["not_before"])
        self._remember(batch_id, path, prefix, tag, foreign=True, redirect=found and found["id"])
        if found is None:
            return batch_id
        if self._record(found["id"]) is None:
            self._remember(found["id"], path, prefix, tag, adopted=adopted)
        return str(found["id"])

    async def _list(self) -> AsyncIterator[dict[str, Any]]:
        async for b in self.client.messages.batches.list(limit=100):
            yield b.model_dump()

    async def batches_newest_first(self) -> AsyncIterator[dict[str, Any]]:
        async for b in self._list():
            yield self._normal(b)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch's state; for a unit whose adopted batch proved foreign, the state of the unit's own batch
        found after it (the ledger keeps the first id; the record redirects)."""
        for _ in range(100):  # each hop follows a batch proven foreign: bounded by the batches listed
            rec = self._record(batch_id)
            if rec is not None and rec.get("redirect"):
                batch_id = rec["redirect"]
                continue
            b = self._normal((await self.client.messages.batches.retrieve(batch_id)).model_dump(), rec)
            if rec is None or not rec.get("adopted") or not b["output_file_id"]:
                return b
            nxt = await self._proven(batch_id, rec)
            if nxt == batch_id:
                return self._normal((await self.client.messages.batches.retrieve(batch_id)).model_dump())
            batch_id = nxt
        raise ProviderError(f"Anthropic batch {batch_id}: too many foreign batches of the unit's size to follow")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        rec = self._record(batch_id)
        if rec is not None and rec.get("redirect"):
            return await self.cancel(rec["redirect"])
        try:
            return self._normal((await self.client.messages.batches.cancel(batch_id)).model_dump())
        except anthropic.ConflictError:
            return await self.retrieve(batch_id)

    def _normal(self, b: dict[str, Any], rec: dict[str, Any] | None = None) -> dict[str, Any]:
        """An Anthropic batch in the shape the runner reads (OpenAI's): status, counts, result "file" ids."""
        rec = rec if rec is not None else self._record(b["id"])
        c = b.get("request_counts") or {}
        status = _STATUS.get(b["processing_status"])
        if status is None:  # ended
            status = "cancelled" if b.get("cancel_initiated_at") else "completed"
        ended = b["processing_status"] == "ended" and b.get("results_url")
        return {
            "id": b["id"],
            "status": status,
            "created_at": _epoch(b.get("created_at")),
            "request_counts": {
                "total": sum(int(v or 0) for v in c.values()),
                "completed": int(c.get("succeeded") or 0),
                "failed": sum(int(c.get(k) or 0) for k in ("errored", "canceled", "expired")),
            },
            "output_file_id": b["id"] if ended else None,
            "error_file_id": None,
            "metadata": (rec or {}).get("tag") or {},
        }

    # -- results ------------------------------------------------------------------------------------------
    async def download(self, file_id: str, dest: Path) -> int:
        """The batch's results as OpenAI batch output lines under the unit's custom_ids (atomically); a batch
        whose results carry another unit's prefix is recorded as foreign and gives no results."""
        rec = self._record(file_id)
        if rec is None:
            raise ProviderError(f"no local record of Anthropic batch {file_id} in {self.state_dir}")
        back = {
            T.wire_id(orjson.loads(ln)["custom_id"], rec["prefix"]): orjson.loads(ln)["custom_id"]
            for ln in iter_lines(Path(rec["path"]))
            if ln.strip()
        }
        tmp = dest.with_suffix(dest.suffix + ".part")
        size = 0
        with tmp.open("wb") as fh:
            # the SDK's streamed response, lines parsed with orjson: its typed decoder builds a pydantic model per
            # line, 3x slower on 5,000 results (docs/benchmarks.md)
            async with self.client.messages.batches.with_streaming_response.results(file_id) as resp:
                async for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    r = orjson.loads(line)
                    cid = back.get(r["custom_id"])
                    if cid is None:
                        if not r["custom_id"].startswith(rec["prefix"] + "_"):
                            self._remember(
                                file_id,
                                Path(rec["path"]),
                                rec["prefix"],
                                rec.get("tag") or {},
                                foreign=True,
                                redirect=rec.get("redirect"),
                            )
                            fh.truncate(0)
                            size = 0
                            break
                        continue
                    data = orjson.dumps(_openai_line(cid, r["result"])) + b"\n"
                    fh.write(data)
                    size += len(data)
        tmp.replace(dest)
        return size

    # -- the per-batch records ----------------------------------------------------------------------------
    def _remember(
        self, batch_id: str, path: Path, prefix: str, tag: dict[str, str], *, foreign: bool = False, **extra: Any
    ) -> None:
        """Record (atomically, durably) which unit file and prefix a batch belongs to, before the ledger hears of it.
        `adopted` (requests, not_before): found by its size after a crash, not yet proven; `redirect`: proven
        foreign, the unit's own batch is that one."""
        dest = self.state_dir / f"{batch_id}.json"
        tmp = dest.with_suffix(".tmp")
        rec = {"path": str(path), "prefix": prefix, "tag": tag, "foreign": foreign, **extra}
        tmp.write_bytes(orjson.dumps(rec))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(dest)

    def _record(self, batch_id: str) -> dict[str, Any] | None:
        try:
            return dict(orjson.loads((self.state_dir / f"{batch_id}.json").read_bytes()))
        except FileNotFoundError:
            return None

    async def aclose(self) -> None:
        await self.client.close()


def _openai_line(custom_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """One Anthropic result as an OpenAI batch output line (a 2xx response, or an error the runner classifies)."""
    kind = result.get("type")
    if kind == "succeeded":
        return {
            "custom_id": custom_id,
            "response": {"status_code": 200, "body": T.from_anthropic(result.get("message") or {})},
        }
    if kind == "errored":
        err = ((result.get("error") or {}).get("error")) or {}
        etype = str(err.get("type") or "api_error")
        return {
            "custom_id": custom_id,
            "response": {
                "status_code": _ERROR_STATUS.get(etype, 500),
                "body": {"error": {"code": etype, "message": err.get("message") or etype}},
            },
        }
    code = "batch_cancelled" if kind == "canceled" else "batch_expired"
    return {
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": f"the request was {kind} before it was processed"},
    }
