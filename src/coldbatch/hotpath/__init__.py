"""The hot path: synchronous calls to an OpenAI-compatible provider within RPM/TPM budgets, with retries.

`limits` holds the pure rules (pacing, header parsing, the retry policy); `client.SyncClient` runs them
against a provider over httpx. Used by `coldbatch run --mode sync` and by the server's relay engine.
"""

from __future__ import annotations

from coldbatch.hotpath.client import ClientStats, SyncClient
from coldbatch.hotpath.limits import COLD, HOT, PRIORITY, Pacer, RetryPolicy, decide, request_cost

__all__ = ["COLD", "HOT", "PRIORITY", "ClientStats", "Pacer", "RetryPolicy", "SyncClient", "decide", "request_cost"]
