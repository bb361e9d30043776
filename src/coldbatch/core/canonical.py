"""The identity of a request: what makes two requests "the same question".

`request_key(endpoint, body)` hashes the endpoint and the body with keys sorted and insignificant
whitespace removed (orjson's canonical output), so `{"b":1, "a":2}` and `{"a": 2,"b": 1}` are one
question. The key is 32 hex digits (128 bits of SHA-256) and doubles as the custom_id under which a
distinct request is sent, so results come back already keyed. Pure; used by dedup and the cache.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

KEY_PREFIX = "k-"


def canonical_body(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def request_key(endpoint: str, body: dict[str, Any]) -> str:
    h = hashlib.sha256(endpoint.encode())
    h.update(b"\n")
    h.update(canonical_body(body))
    return KEY_PREFIX + h.hexdigest()[:32]


def is_sampling(body: dict[str, Any]) -> bool:
    """True when repeated calls are meant to differ: temperature (or top_p < 1) above zero, or n > 1."""
    t = body.get("temperature")
    top_p = body.get("top_p")
    n = body.get("n")
    return (
        (isinstance(t, int | float) and t > 0)
        or (isinstance(top_p, int | float) and top_p < 1)
        or (isinstance(n, int) and n > 1)
    )
