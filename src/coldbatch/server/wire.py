"""One send per response: uvicorn's HTTP protocol with the writes of one loop turn joined.

Why: uvicorn writes a response's head and its body with two `transport.write` calls, i.e. two `send`
system calls and two TCP segments, and a client waiting for the answer is woken twice. For the small
answers that dominate a batch server's traffic (polls: ~900 bytes of JSON) that doubles the work of the
network stack on both sides, and on a busy machine each wake-up is another wait for a core (issue 15,
item 6). Here the writes made while a loop turn runs are kept and sent together at its end (or at once
past `FLUSH_BYTES`, so a streamed file is never held in memory): same bytes, same order, one `send`.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: a turn's writes past this many bytes go out at once (a streamed download sends 1 MiB chunks)
FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """Wraps a transport: `write` keeps, the end of the loop turn (or `close`) sends; all else passes."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._parts: list[bytes] = []
        self._size = 0
        self._armed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._parts.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._armed:
            self._armed = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._armed = False
        if not self._parts:
            return
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._size = [], 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol() -> Any:
    """uvicorn's fastest HTTP protocol class (httptools if installed, else h11), coalescing its writes."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # the [server] extra without httptools (or a platform without its wheel)
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class Coalescing(Base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    return Coalescing
