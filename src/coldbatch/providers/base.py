"""The BatchProvider protocol: what the runner needs from any OpenAI-compatible Batch API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from coldbatch.errors import ProviderError


class Retryable(ProviderError):
    """A non-idempotent call (upload, batch create) failed in a way that may or may not have reached the provider.

    The provider does NOT retry these calls itself: a retried POST can create a second file or batch (and a second
    bill). The runner first looks for the object by its tag, and only sends the call again when it is not there.
    """


async def send_once(call: Awaitable[Any], what: str, transient: Callable[[BaseException], bool]) -> Any:
    """Await one non-idempotent call (upload, batch create) exactly once, the same way for every SDK.

    A failure that `transient` says may or may not have reached the provider becomes `Retryable` naming `what`
    (the runner then looks for the object before sending the call again); any other failure is raised as it is.
    """
    try:
        return await call
    except Exception as exc:
        if transient(exc):
            raise Retryable(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise


class BatchProvider(Protocol):
    name: str

    async def upload(self, path: Path, filename: str) -> dict[str, Any]: ...
    async def find_file(self, filename: str, size: int, not_before: int) -> dict[str, Any] | None: ...
    async def create_batch(
        self, file_id: str, endpoint: str, metadata: dict[str, str], completion_window: str
    ) -> dict[str, Any]: ...
    def batches_newest_first(self) -> AsyncIterator[dict[str, Any]]: ...
    async def retrieve(self, batch_id: str) -> dict[str, Any]: ...
    async def cancel(self, batch_id: str) -> dict[str, Any]: ...
    async def download(self, file_id: str, dest: Path) -> int: ...
    async def delete_file(self, file_id: str) -> None: ...
    async def aclose(self) -> None: ...

    # Optional: a provider whose batches carry no metadata (Anthropic) defines
    # `async def find_batch(file_id, tag, requests, not_before) -> dict | None`, which the runner then asks
    # instead of comparing `metadata` with the unit's tag (see providers/anthropic_batches.py).
