"""Fixtures shipped with coldbatch for tests and benchmarks (never used by the product itself).

`testing.upstream`: a rate-limited, fault-injecting OpenAI-compatible upstream (needs the `server` extra).
"""

from __future__ import annotations

__all__: list[str] = []
