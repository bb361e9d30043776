"""Other providers' request dialects on the one engine interface: the single place where an Anthropic
Messages or an OpenAI Responses body becomes a chat completions body, and the answer goes back.

`wrap(engine)` returns an engine that also serves `/v1/messages` and `/v1/responses` when the engine
serves chat: the sync handlers and the batch executor call it as they call any engine, so a Responses line
in an OpenAI batch, an Anthropic batch request and a hot `/v1/messages` call take the same path (slots,
results log, exactly-once) as chat. Both dialects are translated for every engine, even one that could
answer `/v1/responses` itself (echo, relay): one translation, tested once, and the relay's upstream only
needs chat.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from coldbatch.engines.base import Engine, Result
from coldbatch.protocol import limits as L
from coldbatch.server.dialects import anthropic, responses

#: endpoint → (to_chat, from_chat, error): the translation module of each dialect
DIALECTS: dict[str, Any] = {anthropic.MESSAGES: anthropic, L.RESPONSES: responses}


class DialectEngine:
    """`inner` plus the dialects; everything else (health, workers, ...) is the inner engine's."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        chat_n = inner.info.concurrency(L.CHAT)
        self.info = dataclasses.replace(
            inner.info,
            endpoints=inner.info.endpoints | set(DIALECTS),
            endpoint_concurrency=(*inner.info.endpoint_concurrency, *((ep, chat_n) for ep in DIALECTS)),
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def to_chat(self, dialect: Any, body: dict[str, Any]) -> dict[str, Any] | Result:
        """The chat body, or the dialect's error for a body it refuses or a model this engine does not serve."""
        models, model = self.inner.info.models, body.get("model")
        if models is not None and model not in models:
            return dialect.error_result(  # type: ignore[no-any-return]
                404, f"model: {model!r} is not served here; this server serves: {', '.join(sorted(models))}."
            )
        try:
            return dialect.to_chat(body)  # type: ignore[no-any-return]
        except dialect.Unsupported as exc:
            return dialect.error_result(400, str(exc))  # type: ignore[no-any-return]

    async def complete(self, endpoint: str, body: dict[str, Any]) -> Result:
        dialect = DIALECTS.get(endpoint)
        if dialect is None:
            return await self.inner.complete(endpoint, body)
        chat = self.to_chat(dialect, body)
        if isinstance(chat, Result):
            return chat
        return dialect.from_chat(await self.inner.complete(L.CHAT, chat), body)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self.inner.aclose()


class DialectEngineMany(DialectEngine):
    """For an engine with `complete_many` (the executor sends it chunks): the translated bodies go as one
    chunk too; a body the dialect refuses is answered alone, without the engine."""

    async def complete_many(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result]:
        dialect = DIALECTS.get(endpoint)
        if dialect is None:
            return list(await self.inner.complete_many(endpoint, bodies))  # type: ignore[attr-defined]
        out: list[Result | None] = [None] * len(bodies)
        chats: list[tuple[int, dict[str, Any]]] = []
        for i, body in enumerate(bodies):
            chat = self.to_chat(dialect, body)
            if isinstance(chat, Result):
                out[i] = chat
            else:
                chats.append((i, chat))
        if chats:
            answers = await self.inner.complete_many(L.CHAT, [c for _, c in chats])  # type: ignore[attr-defined]
            for (i, _), res in zip(chats, answers, strict=True):
                out[i] = dialect.from_chat(res, bodies[i])
        return [r for r in out if r is not None]


def wrap(engine: Engine) -> Engine:
    """The engine with the dialects, when it serves chat (an embeddings-only engine stays as it is)."""
    if L.CHAT not in engine.info.endpoints or isinstance(engine, DialectEngine):
        return engine
    return DialectEngineMany(engine) if hasattr(engine, "complete_many") else DialectEngine(engine)
