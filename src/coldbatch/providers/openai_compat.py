"""Any OpenAI-compatible Batch API through the official `openai` SDK (AsyncOpenAI).

The SDK retries 408/409/429/5xx and connection errors with backoff; we raise that to `max_retries` for
the idempotent calls (GET, DELETE, cancel). The two calls that create a billable object, the upload
and `batches.create`, are sent with `max_retries=0`: the SDK has no idempotency key for them, so its
retry after a timeout can create a second file or batch. Their transient failures are raised as
`Retryable`, and the runner reconciles (looks for the object by its tag) before it sends again.
Downloads are streamed to disk. Objects are returned as plain dicts (`model_dump()`), so the runner
does not depend on SDK model classes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai

from coldbatch.providers.base import ProviderError, Retryable, send_once

__all__ = ["OpenAIProvider", "ProviderError", "Retryable"]

#: Azure OpenAI's GA data-plane API version with Files and Batches (override with OPENAI_API_VERSION)
AZURE_API_VERSION = "2024-10-21"
#: failures after which a POST may or may not have taken effect (or surely did not, and may succeed later)
_TRANSIENT = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError, openai.ConflictError)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)


class OpenAIProvider:
    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        max_retries: int = 5,
        timeout: float = 600.0,
        azure: bool = False,
    ) -> None:
        if azure:  # Azure OpenAI: same Files/Batches API under /openai/..., with an api-version on every call
            self.client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
                azure_endpoint=base_url or os.environ.get("AZURE_OPENAI_ENDPOINT", ""),
                api_key=api_key,
                api_version=os.environ.get("OPENAI_API_VERSION", AZURE_API_VERSION),
                max_retries=max_retries,
                timeout=timeout,
            )
        else:
            self.client = openai.AsyncOpenAI(
                base_url=base_url, api_key=api_key or "not-needed", max_retries=max_retries, timeout=timeout
            )
        self._post = self.client.with_options(max_retries=0)  # non-idempotent calls: see the module docstring
        self.name = str(self.client.base_url)

    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        with path.open("rb") as fh:
            f = await send_once(
                self._post.files.create(file=(filename, fh, "application/jsonl"), purpose="batch"),
                f"upload of {filename}",
                _transient,
            )
        return dict(f.model_dump())

    async def find_file(self, filename: str, size: int, not_before: int) -> dict[str, Any] | None:
        """An uploaded file with this name and size, created at or after `not_before` (reconciliation)."""
        async for f in self.client.files.list(purpose="batch", order="desc"):
            if f.created_at < not_before:
                return None
            if f.filename == filename and f.bytes == size:
                return f.model_dump()
        return None

    async def create_batch(
        self, file_id: str, endpoint: str, metadata: dict[str, str], completion_window: str
    ) -> dict[str, Any]:
        b = await send_once(
            self._post.batches.create(
                input_file_id=file_id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window=completion_window,  # type: ignore[arg-type]
                metadata=metadata,
            ),
            f"batch create for {file_id}",
            _transient,
        )
        return dict(b.model_dump())

    async def batches_newest_first(self) -> AsyncIterator[dict[str, Any]]:
        async for b in self.client.batches.list(limit=100):
            yield b.model_dump()

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return (await self.client.batches.retrieve(batch_id)).model_dump()

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        try:
            return (await self.client.batches.cancel(batch_id)).model_dump()
        except openai.ConflictError:
            return await self.retrieve(batch_id)

    async def download(self, file_id: str, dest: Path) -> int:
        """Stream a file's content to `dest` (atomically); returns its size."""
        tmp = dest.with_suffix(dest.suffix + ".part")
        size = 0
        async with self.client.files.with_streaming_response.content(file_id) as resp:
            with tmp.open("wb") as fh:
                async for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)
                    size += len(chunk)
        tmp.replace(dest)
        return size

    async def delete_file(self, file_id: str) -> None:
        with contextlib.suppress(openai.NotFoundError):
            await self.client.files.delete(file_id)

    async def aclose(self) -> None:
        await self.client.close()
