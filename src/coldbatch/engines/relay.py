"""`relay`: answers each request by calling an OpenAI-compatible synchronous endpoint (the upstream).

With it, `coldbatch serve --engine relay --upstream URL` turns any sync API (vLLM, llama.cpp's server,
a provider without a Batch API) into a Batch API: batch lines run against the upstream within the
configured RPM/TPM budgets (or the budgets its `x-ratelimit-*` headers announce), with the hot path's
retry policy, and what the upstream finally answers is the line's result: its status and body, so a
4xx/5xx lands in the batch's error file and never raises. A timeout or connection failure after the
last attempt becomes 504 `upstream_timeout` / 502 `upstream_unreachable`.

Hot requests (the server's own /v1/chat/completions) go through the same budgets; the server gives
them engine slots first, and calls made while `hotpath.PRIORITY` is COLD (a batch lane can set it)
wait behind HOT ones inside the budget too.
"""

from __future__ import annotations

from typing import Any

import httpx

from coldbatch.engines.base import EngineInfo, Result, error_result
from coldbatch.errors import ConfigError
from coldbatch.hotpath.client import SyncClient
from coldbatch.protocol import limits as L

ENDPOINTS = frozenset({L.CHAT, L.EMBEDDINGS, L.COMPLETIONS, L.RESPONSES})


class RelayEngine:
    """`concurrency` (engine option, `--engine-option concurrency=N`, default 32): the most requests in flight
    upstream. Within it the relay follows what the upstream takes at once (`adaptive`, default true): a 429
    halves the requests in flight (once per round), each answer adds back 1/N, so against a server with fewer
    slots (vLLM, llama.cpp's server: 429 beyond them) it settles just under them and climbs back when they
    free up. A Retry-After pauses every request until then; `x-ratelimit-*` budgets pace sends (the pacer).
    `adaptive=false` keeps exactly `concurrency` in flight and answers every 429 with a pause instead."""

    def __init__(
        self,
        upstream: str,
        api_key: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_attempts: int = 5,
        concurrency: int = 32,
        adaptive: bool = True,
        *,
        timeout: float = 600.0,
        window: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not upstream.startswith(("http://", "https://")):
            raise ConfigError(
                f"The relay upstream must be an http(s) URL (e.g. http://127.0.0.1:8080/v1), not {upstream!r}"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 4096:
            raise ConfigError(f"The relay's concurrency must be a whole number from 1 to 4096, not {concurrency!r}")
        if not isinstance(adaptive, bool):
            raise ConfigError(f"The relay's adaptive option must be true or false, not {adaptive!r}")
        self.client = SyncClient(
            upstream,
            api_key,
            rpm=rpm,
            tpm=tpm,
            max_attempts=max_attempts,
            timeout=timeout,
            concurrency=concurrency,
            window=window,
            transport=transport,
            adaptive=adaptive,
        )
        self.info = EngineInfo(name="relay", endpoints=ENDPOINTS, models=None, max_concurrency=concurrency)

    @property
    def in_flight_limit(self) -> int:
        """Requests the relay lets into the upstream at once right now (adapted; at most `concurrency`)."""
        return int(self.client.gate.limit)

    async def complete(self, endpoint: str, body: dict[str, Any]) -> Result:
        if endpoint not in ENDPOINTS:
            return error_result(400, f"The relay engine does not serve {endpoint}.", param="url")
        return await self.client.call(endpoint, body)

    async def aclose(self) -> None:
        await self.client.aclose()
