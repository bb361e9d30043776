"""Batch API request parameters and response objects (spec §2-§3), shared by server and client.

Parameter checks return OpenAI's codes (`missing_required_parameter`, `invalid_value`, `invalid_type`)
as `ApiError`s; object builders always emit every key the SDK types declare, unset ones as null.
"""

from __future__ import annotations

import itertools
import re
import secrets
from typing import Any, Final

from coldbatch.errors import ApiError
from coldbatch.protocol import limits as L

WINDOW_24H: Final = 86_400
FILE_TTL: Final = 30 * 86_400
_WINDOW = re.compile(r"^(\d+)([smh])$")
_UNIT = {"s": 1, "m": 60, "h": 3600}
METADATA_MAX_KEYS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512


def new_id(prefix: str, n: int = 24) -> str:
    """Random URL-safe ids: `file-…`, `batch_…`, `batch_req_…`, `req_…`, `chatcmpl-…` (n hex digits)."""
    return prefix + secrets.token_hex(n // 2)


def _type_name(v: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(v), "a string")


_SEQ = itertools.count(int.from_bytes(secrets.token_bytes(6), "big") << 24)


def seq_id(prefix: str) -> str:
    """Cheap unique ids for per-request objects (`batch_req_…`, `req_…`): a random base plus a counter.
    Not secret — only object ids that grant access (files, batches) come from `new_id`."""
    return f"{prefix}{next(_SEQ):024x}"


def completion_window_seconds(value: object, *, allow_short: bool) -> int:
    """OpenAI accepts only "24h"; with `allow_short` (a documented coldbatch extension for tests and
    local work) any `<N>s|m|h` up to 24h is accepted too."""
    if value == "24h":
        return WINDOW_24H
    m = _WINDOW.match(value) if isinstance(value, str) else None
    seconds = int(m.group(1)) * _UNIT[m.group(2)] if m else 0
    if allow_short and 0 < seconds <= WINDOW_24H:
        return seconds
    raise ApiError(
        400, f"Invalid value: '{value}'. Supported values are: '24h'.", param="completion_window", code="invalid_value"
    )


def window_left(expires_at: int, clock: float) -> float:
    """Seconds until a batch's completion window ends. Timestamps are whole seconds (`created_at` is the
    creation time rounded down), so the window ends when the `expires_at` second has passed, not when it
    begins: a batch is never given less than the window it asked for (a "1s" window created at x.9 s
    would otherwise have had 0.1 s)."""
    return expires_at + 1 - clock


def past_window(expires_at: int, clock: float) -> bool:
    """True once a batch's completion window is over (see `window_left`)."""
    return window_left(expires_at, clock) <= 0


def check_metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(
            400,
            f"Invalid type for 'metadata': expected an object, but got {_type_name(value)} instead.",
            param="metadata",
            code="invalid_type",
        )
    if len(value) > METADATA_MAX_KEYS:
        raise ApiError(
            400,
            f"Invalid 'metadata': too many keys ({len(value)} > {METADATA_MAX_KEYS}).",
            param="metadata",
            code="invalid_value",
        )
    for k, v in value.items():
        if len(k) > METADATA_MAX_KEY:
            raise ApiError(
                400,
                f"Invalid 'metadata': key '{k[:20]}…' is longer than {METADATA_MAX_KEY} characters.",
                param="metadata",
                code="invalid_value",
            )
        if not isinstance(v, str):
            raise ApiError(
                400,
                f"Invalid type for 'metadata.{k}': expected a string, but got {_type_name(v)} instead.",
                param=f"metadata.{k}",
                code="invalid_type",
            )
        if len(v) > METADATA_MAX_VALUE:
            raise ApiError(
                400,
                f"Invalid 'metadata.{k}': string too long ({len(v)} > {METADATA_MAX_VALUE}).",
                param=f"metadata.{k}",
                code="invalid_value",
            )
    return dict(value)


def check_create_batch(body: object, *, allow_short_windows: bool) -> dict[str, Any]:
    """Validate a POST /v1/batches body; returns the normalized parameters."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_request")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if body.get(key) in (None, ""):
            raise ApiError(400, f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
    if not isinstance(body["input_file_id"], str):
        raise ApiError(
            400, "Invalid type for 'input_file_id': expected a string.", param="input_file_id", code="invalid_type"
        )
    if body["endpoint"] not in L.ENDPOINTS:
        raise ApiError(
            400,
            f"Invalid value: '{body['endpoint']}'. Supported values are: "
            + ", ".join(f"'{e}'" for e in L.ENDPOINTS)
            + ".",
            param="endpoint",
            code="invalid_value",
        )
    window = completion_window_seconds(body["completion_window"], allow_short=allow_short_windows)
    out = {
        "input_file_id": body["input_file_id"],
        "endpoint": body["endpoint"],
        "completion_window": body["completion_window"],
        "window_seconds": window,
        "metadata": check_metadata(body.get("metadata")),
    }
    oea = body.get("output_expires_after")
    if oea is not None:
        out["output_ttl"] = _expires_after(oea, "output_expires_after")
    return out


def _expires_after(value: object, param: str) -> int:
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise ApiError(
            400,
            f'Invalid \'{param}\': expected {{"anchor": "created_at", "seconds": N}}.',
            param=param,
            code="invalid_value",
        )
    return check_ttl(value.get("seconds"), f"{param}.seconds")


def check_ttl(seconds: object, param: str) -> int:
    """Seconds in 3600..2592000: a JSON integer, or the decimal digits of a multipart form field."""
    n = -1
    if isinstance(seconds, str) and seconds.isascii() and seconds.isdigit():
        n = int(seconds)
    elif isinstance(seconds, int) and not isinstance(seconds, bool):
        n = seconds
    elif isinstance(seconds, float) and seconds.is_integer():
        n = int(seconds)
    if not 3600 <= n <= FILE_TTL:
        raise ApiError(
            400,
            f"Invalid '{param}': must be an integer between 3600 and {FILE_TTL}.",
            param=param,
            code="invalid_value",
        )
    return n


def list_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """The cursor-page envelope; never `has_more: true` with empty data (spec §8)."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": bool(items) and has_more,
    }
