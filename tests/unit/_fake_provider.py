"""An in-memory Batch API for the runner's tests: scripted per-request answers and batch fates, and hooks that
fail a call before or after it took effect (a crash, or a timeout the SDK would have retried)."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson

from coldbatch.providers.base import Retryable

#: (custom_id, body, n-th execution of that custom_id, from 1) -> answer:
#: ("ok", content) | (status, code, message) for an error line | None: the request is in neither file
Answer = Callable[[str, dict[str, Any], int], Any]


class Crash(Exception):
    """The process dies here (raised by a hook; the runner must not catch it)."""


def always_ok(cid: str, body: dict[str, Any], n: int) -> Any:
    return ("ok", f"answer to {cid}")


class FakeProvider:
    name = "fake"

    def __init__(self, answer: Answer = always_ok) -> None:
        self.answer = answer
        self.files: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.executed: collections.Counter[str] = collections.Counter()
        self.cancel_calls: list[str] = []
        #: batch id -> fate at its first retrieve: "completed" (default), "expired:K" (K requests done),
        #: "failed:CODE", "running" (stays in_progress), "cancelled-by-provider"
        self.fate: Callable[[dict[str, Any]], str] = lambda b: "completed"
        #: method -> list of "before" | "after" | "retry-before" | "retry-after": what the next calls do
        self.hooks: dict[str, list[str]] = collections.defaultdict(list)
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)

    # -- hooks --------------------------------------------------------------------------------------------
    def _hook(self, method: str, when: str) -> None:
        plan = self.hooks.get(method)
        if plan and plan[0].endswith(when):
            kind = plan.pop(0)
            if kind.startswith("retry"):
                raise Retryable(f"{method}: simulated timeout ({when} the call took effect)")
            raise Crash(f"{method}: simulated crash ({when} the call took effect)")

    # -- files --------------------------------------------------------------------------------------------
    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        self.calls["upload"] += 1
        self._hook("upload", "before")
        data = path.read_bytes()
        fid = f"file-{next(self._ids)}"
        self.files[fid] = {
            "id": fid,
            "filename": filename,
            "bytes": len(data),
            "created_at": int(time.time()),
            "purpose": "batch",
            "seq": next(self._seq),
        }
        self.blobs[fid] = data
        self._hook("upload", "after")
        return dict(self.files[fid])

    async def find_file(self, filename: str, size: int, not_before: int) -> dict[str, Any] | None:
        self.calls["find_file"] += 1
        for f in sorted(self.files.values(), key=lambda f: -f["seq"]):
            if f["created_at"] < not_before:
                return None
            if f["filename"] == filename and f["bytes"] == size:
                return dict(f)
        return None

    async def download(self, file_id: str, dest: Path) -> int:
        self.calls["download"] += 1
        dest.write_bytes(self.blobs[file_id])
        return len(self.blobs[file_id])

    async def delete_file(self, file_id: str) -> None:
        self.calls["delete_file"] += 1
        self.files.pop(file_id, None)
        self.blobs.pop(file_id, None)

    def _store(self, kind: str, lines: list[bytes]) -> str | None:
        if not lines:
            return None
        fid = f"file-{next(self._ids)}"
        data = b"".join(x + b"\n" for x in lines)
        self.files[fid] = {
            "id": fid,
            "filename": f"{kind}.jsonl",
            "bytes": len(data),
            "created_at": int(time.time()),
            "purpose": "batch_output",
            "seq": next(self._seq),
        }
        self.blobs[fid] = data
        return fid

    # -- batches ------------------------------------------------------------------------------------------
    async def create_batch(
        self, file_id: str, endpoint: str, metadata: dict[str, str], completion_window: str
    ) -> dict[str, Any]:
        self.calls["create_batch"] += 1
        self._hook("create_batch", "before")
        assert file_id in self.files, f"batch on a missing file {file_id}"
        bid = f"batch_{next(self._ids)}"
        self.batches[bid] = {
            "id": bid,
            "status": "validating",
            "input_file_id": file_id,
            "endpoint": endpoint,
            "metadata": dict(metadata),
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "seq": next(self._seq),
        }
        self._hook("create_batch", "after")
        return dict(self.batches[bid])

    async def batches_newest_first(self) -> AsyncIterator[dict[str, Any]]:
        self.calls["list_batches"] += 1
        for b in sorted(self.batches.values(), key=lambda b: -b["seq"]):
            yield dict(b)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        self.calls["retrieve"] += 1
        b = self.batches[batch_id]
        if b["status"] == "validating":
            fate = self.fate(b)
            if fate.startswith("failed:"):
                b["status"] = "failed"
                b["errors"] = {
                    "object": "list",
                    "data": [{"code": fate[7:], "message": f"batch failed: {fate[7:]}", "line": None, "param": None}],
                }
            elif fate == "running":
                b["status"] = "in_progress"
            else:
                self._run(b, fate)
        return dict(b)

    def _run(self, b: dict[str, Any], fate: str) -> None:
        lines = [orjson.loads(x) for x in self.blobs[b["input_file_id"]].splitlines() if x.strip()]
        stop = int(fate.split(":")[1]) if fate.startswith("expired:") else len(lines)
        out: list[bytes] = []
        err: list[bytes] = []
        for i, req in enumerate(lines):
            cid = req["custom_id"]
            if i >= stop or (fate == "cancelled-by-provider" and i >= len(lines) // 2):
                code = "batch_expired" if fate.startswith("expired") else "batch_cancelled"
                err.append(
                    orjson.dumps(
                        {"id": "r", "custom_id": cid, "response": None, "error": {"code": code, "message": code}}
                    )
                )
                continue
            self.executed[cid] += 1
            ans = self.answer(cid, req["body"], self.executed[cid])
            if ans is None:
                continue
            if ans[0] == "ok":
                body = {
                    "choices": [{"message": {"role": "assistant", "content": ans[1]}}],
                    "usage": {
                        "prompt_tokens": 10,
                        "completion_tokens": 2,
                        "prompt_tokens_details": {"cached_tokens": 4},
                    },
                }
                out.append(
                    orjson.dumps(
                        {"id": "r", "custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None}
                    )
                )
            else:
                status, code, message = ans
                err.append(
                    orjson.dumps(
                        {
                            "id": "r",
                            "custom_id": cid,
                            "response": {"status_code": status, "body": {"error": {"message": message, "code": code}}},
                            "error": None,
                        }
                    )
                )
        b["output_file_id"] = self._store("output", out)
        b["error_file_id"] = self._store("error", err)
        b["status"] = (
            "expired" if fate.startswith("expired") else "cancelled" if fate == "cancelled-by-provider" else "completed"
        )

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        self.calls["cancel"] += 1
        self.cancel_calls.append(batch_id)
        b = self.batches[batch_id]
        if b["status"] in ("validating", "in_progress"):
            self._run(b, "expired:0")  # nothing executed: every line reported as not run
            b["status"] = "cancelled"
            for line in self.blobs.get(b["error_file_id"] or "", b"").splitlines():
                assert b"batch_expired" in line
            if b["error_file_id"]:
                self.blobs[b["error_file_id"]] = self.blobs[b["error_file_id"]].replace(
                    b"batch_expired", b"batch_cancelled"
                )
        return dict(b)

    async def aclose(self) -> None:
        return None

    # -- what the tests look at ---------------------------------------------------------------------------
    def tags(self) -> list[tuple[str, str]]:
        return [(b["metadata"]["coldbatch_unit"], b["metadata"]["coldbatch_try"]) for b in self.batches.values()]
