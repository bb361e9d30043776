"""How a batch's requests are handed to the engine: in groups, on a number of lanes. One rule for the
single-process executor and the scale-out chunk workers, so an engine sees the same calls from both.

An engine that has `complete_many` (llama.cpp, echo) and room for at least `GROUP` requests at once gets
groups of `GROUP` (one call, one Python round trip per group instead of per request); any other gets
requests one by one. The lanes (tasks calling the engine at once) fill its concurrency with groups.
"""

from __future__ import annotations

from typing import Any

from coldbatch.engines.base import Engine, Result

#: requests per engine call where the engine takes groups
GROUP = 32


def group_size(engine: Engine, endpoint: str) -> int:
    """Requests per call: `GROUP` where the engine takes groups and has room for one, else 1."""
    return GROUP if hasattr(engine, "complete_many") and engine.info.concurrency(endpoint) >= GROUP else 1


def lanes(engine: Engine, endpoint: str) -> int:
    """Calls in flight at once: the engine's concurrency for `endpoint`, in groups (at least one)."""
    return max(1, engine.info.concurrency(endpoint) // group_size(engine, endpoint))


async def complete(engine: Engine, endpoint: str, bodies: list[dict[str, Any]]) -> list[Result]:
    """The engine's results for `bodies`, in order: one `complete_many` call, or one `complete` each."""
    many = getattr(engine, "complete_many", None)
    if many is not None and len(bodies) > 1:
        return list(await many(endpoint, bodies))
    return [await engine.complete(endpoint, b) for b in bodies]
