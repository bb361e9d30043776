"""server/wire.py: the writes of one loop turn leave as one send, in order, and nothing is held past the
turn, past `FLUSH_BYTES`, or past `close`. Real sockets and a real event loop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from coldbatch.server.wire import FLUSH_BYTES, CoalescingTransport, http_protocol


def received(peer: socket.socket) -> bytes:
    """What has arrived so far, without waiting."""
    try:
        return peer.recv(1 << 22)
    except BlockingIOError:
        return b""


async def pair() -> tuple[CoalescingTransport, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return CoalescingTransport(transport, loop), peer  # type: ignore[arg-type]


def test_a_head_and_body_leave_together_at_the_end_of_the_turn() -> None:
    async def main() -> tuple[bytes, bytes, bytes]:
        t, peer = await pair()
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        t.write(memoryview(b"{}"))
        during = received(peer)  # a plain transport has sent the head by now
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        after = received(peer)
        t.write(b"next")
        t.close()  # close sends what is kept first
        await asyncio.sleep(0.01)
        closing = received(peer)
        peer.close()
        return during, after, closing

    during, after, closing = asyncio.run(main())
    assert during == b""
    assert after == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    assert closing == b"next"


def test_a_large_write_is_not_held() -> None:
    async def main() -> int:
        t, peer = await pair()
        t.write(b"x" * (FLUSH_BYTES + 1))
        await asyncio.sleep(0)  # no turn has ended yet for the flush scheduled by the first write...
        got = len(received(peer))  # ...but a large write went out at once
        t.close()
        await asyncio.sleep(0.01)
        peer.close()
        return got

    assert asyncio.run(main()) > 0


@pytest.mark.parametrize("kind", ["fastest", "h11"])
def test_the_protocol_class_is_uvicorns_with_coalescing(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "h11":  # a [server] install without httptools falls back to h11
        import sys

        monkeypatch.setitem(sys.modules, "uvicorn.protocols.http.httptools_impl", None)
    cls = http_protocol()
    base = cls.__mro__[1].__name__
    assert base == ("H11Protocol" if kind == "h11" else "HttpToolsProtocol")
