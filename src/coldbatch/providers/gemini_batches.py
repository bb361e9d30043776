"""Gemini API batch mode through the official `google-genai` SDK, behind the runner's `BatchProvider` protocol.

Wire format (Gemini Developer API, v1beta): the unit's requests are uploaded through the File API as JSONL
whose lines are `{"key": custom_id, "request": GenerateContentRequest}` (`translate.to_gemini`); a batch is
created with `models/{model}:batchGenerateContent` from that file; when it succeeds its `dest.file_name` is a
JSONL file of `{"key", "response"}` or `{"key", "error"|"status"}` lines, which `download` rewrites as OpenAI
batch output lines (`translate.from_gemini`). A batch not done after 48 hours ends EXPIRED with no results at
all: every request of it is then retried (missing results are transient).

Exactly-once as with OpenAI, by names instead of metadata: the uploaded file's display name is the runner's
file name plus `#model` (the batch call needs the model, and after a crash only the file can say it), and the
batch's display name is the unit's tag (`coldbatch:JOB:UNIT:TRY:ROUND:SHA`), parsed back into `metadata` so the
runner finds a batch created just before a crash exactly as it does on OpenAI. Uploads and batch creation are
sent without SDK retries (`Retryable` instead; see OpenAIProvider); reads are retried by the SDK.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from google import genai
from google.genai import errors as gerrors
from google.genai import types as gtypes

from coldbatch.providers import translate as T
from coldbatch.providers.base import ProviderError, send_once
from coldbatch.validation import iter_lines

_STATUS = {
    "JOB_STATE_PENDING": "in_progress",
    "JOB_STATE_QUEUED": "in_progress",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
#: google.rpc codes in a result line's error -> the HTTP status outcomes.py classifies by
_RPC_HTTP = {3: 400, 5: 404, 7: 403, 8: 429, 4: 504, 13: 500, 14: 503, 16: 401, 9: 400, 11: 400, 10: 409}
_TAG_KEYS = ("coldbatch_job", "coldbatch_unit", "coldbatch_try", "coldbatch_round", "coldbatch_sha256")


def tag_name(tag: dict[str, str]) -> str:
    """A unit's tag as a batch display name (and back with `tag_of`)."""
    return "coldbatch:" + ":".join(tag[k] for k in _TAG_KEYS)


def tag_of(display_name: str | None) -> dict[str, str]:
    parts = (display_name or "").split(":")
    if len(parts) != len(_TAG_KEYS) + 1 or parts[0] != "coldbatch":
        return {}
    return dict(zip(_TAG_KEYS, parts[1:], strict=True))


def _epoch(value: Any) -> int:
    return int(value.timestamp()) if isinstance(value, datetime) else int(value or 0)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    code = getattr(exc, "code", 0) or 0
    return isinstance(exc, gerrors.APIError) and (code in (408, 409, 429) or code >= 500)


class GeminiProvider:
    """See the module docstring. `base_url`: the API root (default Google's); a local stand-in in tests."""

    def __init__(
        self, *, base_url: str | None, api_key: str | None, max_retries: int = 5, timeout: float = 600.0
    ) -> None:
        def client(attempts: int) -> genai.Client:
            opts = gtypes.HttpOptions(
                base_url=base_url,
                api_version="v1beta",
                timeout=int(timeout * 1000),
                retry_options=gtypes.HttpRetryOptions(attempts=attempts),
            )
            return genai.Client(api_key=api_key or "not-needed", http_options=opts)

        self._client, self._post_client = client(max_retries), client(1)  # the second: non-idempotent calls
        self.client, self._post = self._client.aio, self._post_client.aio
        self.name = base_url or "https://generativelanguage.googleapis.com"

    # -- files --------------------------------------------------------------------------------------------
    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        """Translate the unit's lines to Gemini's `{"key", "request"}` JSONL and upload it (display name
        `filename#model`)."""
        tmp = path.with_suffix(".gemini.jsonl")
        model = ""
        with tmp.open("wb") as out:
            for n, line in enumerate(iter_lines(path), 1):
                if not line.strip():
                    continue
                rec = orjson.loads(line)
                model = model or str(rec["body"].get("model", ""))
                try:
                    req = T.to_gemini(rec["body"])
                except T.Untranslatable as exc:
                    raise T.Untranslatable(f"{path}:{n}: {exc}") from exc
                out.write(orjson.dumps({"key": rec["custom_id"], "request": req}) + b"\n")
        try:
            f = await send_once(
                self._post.files.upload(
                    file=str(tmp), config={"display_name": f"{filename}#{model}", "mime_type": "jsonl"}
                ),
                f"upload of {filename}",
                _transient,
            )
        finally:
            tmp.unlink(missing_ok=True)
        return self._file(f)

    @staticmethod
    def _file(f: Any) -> dict[str, Any]:
        return {
            "id": f.name,
            "filename": (f.display_name or "").split("#", 1)[0],
            "bytes": f.size_bytes,
            "created_at": _epoch(f.create_time),
            "model": (f.display_name or "#").split("#", 1)[1],
        }

    async def find_file(self, filename: str, size: int, not_before: int) -> dict[str, Any] | None:
        """The uploaded file with this display name created since `not_before` (its size is the translated
        file's, not `size`)."""
        async for f in await self.client.files.list(config={"page_size": 100}):
            d = self._file(f)
            if d["filename"] == filename and d["created_at"] >= not_before and f.state != gtypes.FileState.FAILED:
                return d
        return None

    async def delete_file(self, file_id: str) -> None:
        with contextlib.suppress(gerrors.ClientError):
            await self.client.files.delete(name=file_id)

    # -- batches ------------------------------------------------------------------------------------------
    async def create_batch(
        self, file_id: str, endpoint: str, metadata: dict[str, str], completion_window: str
    ) -> dict[str, Any]:
        if not endpoint.endswith("/chat/completions"):
            raise ProviderError(f"Gemini batch mode is driven here for chat requests only, not {endpoint}")
        model = self._file(await self.client.files.get(name=file_id))["model"]
        b = await send_once(
            self._post.batches.create(model=model, src=file_id, config={"display_name": tag_name(metadata)}),
            f"batch create for {file_id}",
            _transient,
        )
        return self._normal(b)

    async def find_batch(
        self, file_id: str, tag: dict[str, str], requests: int, not_before: int
    ) -> dict[str, Any] | None:
        """The batch whose display name is this unit's tag, created since `not_before`. The whole list is read:
        Gemini does not document its order, so the runner's newest-first early stop is not relied on."""
        async for b in self.batches_newest_first():
            if b["metadata"] == tag and b["created_at"] >= not_before:
                return b
        return None

    async def batches_newest_first(self) -> AsyncIterator[dict[str, Any]]:
        async for b in await self.client.batches.list(config={"page_size": 100}):
            yield self._normal(b)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._normal(await self.client.batches.get(name=batch_id))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        with contextlib.suppress(gerrors.ClientError):  # already done: answered with its state, as OpenAI's 409
            await self.client.batches.cancel(name=batch_id)
        return await self.retrieve(batch_id)

    @staticmethod
    def _normal(b: Any) -> dict[str, Any]:
        """A Gemini BatchJob in the shape the runner reads (OpenAI's)."""
        state = str(b.state.value if hasattr(b.state, "value") else b.state)
        status = _STATUS.get(state, "in_progress")
        errors = []
        if status == "failed":
            errors = [{"code": "batch_failed", "message": (b.error.message if b.error else None) or state}]
        out_file = b.dest.file_name if b.dest is not None and status in ("completed", "cancelled") else None
        return {
            "id": b.name,
            "status": status,
            "created_at": _epoch(b.create_time),
            "request_counts": {},
            "output_file_id": out_file,
            "error_file_id": None,
            "metadata": tag_of(b.display_name),
            "errors": {"data": errors},
        }

    # -- results ------------------------------------------------------------------------------------------
    async def download(self, file_id: str, dest: Path) -> int:
        """The results file as OpenAI batch output lines (atomically); returns the size written."""
        raw = dest.with_suffix(dest.suffix + ".gemini")
        await self.client.files.download(file=file_id, destination=str(raw))
        tmp = dest.with_suffix(dest.suffix + ".part")
        size = 0
        with tmp.open("wb") as fh:
            for line in iter_lines(raw):
                if line.strip():
                    data = orjson.dumps(_openai_line(orjson.loads(line))) + b"\n"
                    fh.write(data)
                    size += len(data)
        tmp.replace(dest)
        raw.unlink(missing_ok=True)
        return size

    async def aclose(self) -> None:
        for c in (self._client, self._post_client):
            with contextlib.suppress(Exception):
                await c.aio.aclose()


def _openai_line(rec: dict[str, Any]) -> dict[str, Any]:
    """One Gemini result line as an OpenAI batch output line."""
    key = str(rec.get("key"))
    if rec.get("response") is not None:
        return {"custom_id": key, "response": {"status_code": 200, "body": T.from_gemini(rec["response"])}}
    err = rec.get("error") or rec.get("status") or {}
    code = int(err.get("code") or 13)
    status = code if code >= 100 else _RPC_HTTP.get(code, 500)
    return {
        "custom_id": key,
        "response": {
            "status_code": status,
            "body": {
                "error": {
                    "code": str(err.get("status") or f"rpc_{code}"),
                    "message": err.get("message") or "the request failed",
                }
            },
        },
    }
