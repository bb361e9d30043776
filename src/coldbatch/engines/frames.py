"""The engine worker protocol: length-prefixed JSON frames over a byte stream.

One protocol, whatever carries it: today a worker's stdin/stdout pipes (`engines/pool.py` starts it),
later a TCP connection to a worker on another machine. Every frame is a 4-byte little-endian length
followed by that many bytes of JSON (an object with an `op`):

    supervisor -> worker   {"op": "start", "engine": NAME, "options": {...}, "plugins": [...] | null}
    worker -> supervisor   {"op": "ready", "pid": N, "info": {name, endpoints, models, max_concurrency, fixture,
                                                           endpoint_concurrency}}
                           {"op": "failed", "error": MESSAGE}          (the engine could not be built)
    supervisor -> worker   {"op": "call", "id": N, "endpoint": PATH, "bodies": [BODY, ...]}
    worker -> supervisor   {"op": "done", "id": N, "results": [[STATUS, BODY, USAGE], ...]}
    supervisor -> worker   {"op": "stop"}                                (finish in-flight calls, then exit)

A worker whose input stream ends exits at once: its supervisor is gone. Calls are answered in any
order (`id` matches them); an engine exception becomes a 500 result, never a lost call.
"""

from __future__ import annotations

import struct
from typing import IO, Any, Final

import orjson

from coldbatch.engines.base import EngineInfo, Result

_HEADER: Final = struct.Struct("<I")
MAX_FRAME: Final = 1 << 30  #: a frame larger than this is a broken stream, not a message


class BrokenStream(EOFError):
    """The stream ended, or carried something that is not a frame."""


def write_frame(stream: IO[bytes], message: dict[str, Any]) -> None:
    data = orjson.dumps(message)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:  # an unbuffered pipe may take part of a large frame per write
        view = view[stream.write(view) or len(view) :]
    stream.flush()


def read_frame(stream: IO[bytes]) -> dict[str, Any]:
    """The next message.

    Raises:
        BrokenStream: the stream ended (cleanly or mid-frame) or holds garbage.
    """
    head = _read_exactly(stream, _HEADER.size)
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise BrokenStream(f"frame of {size} bytes announced: not a worker stream")
    try:
        message = orjson.loads(_read_exactly(stream, size))
    except orjson.JSONDecodeError as exc:
        raise BrokenStream(f"a frame that is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise BrokenStream("a frame that is not a JSON object")
    return message


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    """`n` bytes: an unbuffered pipe returns what it holds (at most its 64 KiB buffer) per read, so a large
    frame (an embeddings answer of 100 vectors is ~400 KB) arrives in pieces."""
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            raise BrokenStream("the stream ended")
        parts.append(data)
        got += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def info_to_json(info: EngineInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "endpoints": sorted(info.endpoints),
        "models": None if info.models is None else sorted(info.models),
        "max_concurrency": info.max_concurrency,
        "fixture": info.fixture,
        "endpoint_concurrency": [list(pair) for pair in info.endpoint_concurrency],
    }


def info_from_json(data: dict[str, Any]) -> EngineInfo:
    models = data.get("models")
    return EngineInfo(
        name=str(data["name"]),
        endpoints=frozenset(data["endpoints"]),
        models=None if models is None else frozenset(models),
        max_concurrency=int(data["max_concurrency"]),
        fixture=bool(data["fixture"]),
        endpoint_concurrency=tuple((str(e), int(n)) for e, n in data.get("endpoint_concurrency", ())),
    )


def result_to_json(result: Result) -> list[Any]:
    return [result.status_code, result.body, result.usage]


def result_from_json(data: list[Any]) -> Result:
    status, body, usage = data
    return Result(int(status), body, usage or {})
