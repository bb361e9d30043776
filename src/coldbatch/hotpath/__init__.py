"""The hot path: synchronous calls to an OpenAI-compatible provider within RPM/TPM budgets, with retries.

`limits` holds the pure rules (pacing, header parsing, the retry policy); `client.SyncClient` runs them
against a provider over httpx. Used by `coldbatch run --mode sync` and by the server's relay engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coldbatch.hotpath.limits import COLD, HOT, PRIORITY, Pacer, RetryPolicy, decide, request_cost

if TYPE_CHECKING:
    from coldbatch.hotpath.client import ClientStats, SyncClient

__all__ = ["COLD", "HOT", "PRIORITY", "ClientStats", "Pacer", "RetryPolicy", "SyncClient", "decide", "request_cost"]


def __getattr__(name: str) -> Any:
    """The client (and httpx under it, ~0.3 s and 20 MB) loads on first use: a batch-mode run imports
    `hotpath.limits` for the retry policy and never sends a sync request."""
    if name in ("ClientStats", "SyncClient"):
        from coldbatch.hotpath import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
