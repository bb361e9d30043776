"""Fixtures shipped with coldbatch for tests and benchmarks (never used by the product itself).

`testing.upstream`: a rate-limited, fault-injecting OpenAI-compatible upstream (needs the `server` extra).
`testing.gemini`: a stand-in for the Gemini API's batch mode (File API + batch operations), for the Gemini
adapter's tests through the official google-genai SDK (needs the `server` extra).
"""

from __future__ import annotations

__all__: list[str] = []
