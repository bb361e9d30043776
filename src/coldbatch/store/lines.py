"""Input lines of a stored batch file, by number and byte offset, from any blob store, streamed.

A batch is split into chunks of lines (`split_chunks`, once, at validation), each with the byte range it
covers, so a worker reads only its own range (an S3 range GET) instead of the whole file. Lines are
numbered and cut exactly as `validation.iter_lines` does (1-based physical lines, without `\\n` or a
final `\\r`), so line numbers agree with the validator's and the SQLite executor's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
#: one chunk: first line, last line, start byte, end byte (exclusive), requests (non-blank lines)
Chunk = tuple[int, int, int, int, int]


def _split(blocks: Iterator[bytes], first_line: int, start: int) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) of each physical line in the stream of `blocks`."""
    n, offset, rest = first_line, start, b""
    for block in blocks:
        data = rest + block if rest else block
        pos = 0
        while (nl := data.find(b"\n", pos)) >= 0:
            raw = data[pos:nl]
            yield n, offset, raw[:-1] if raw.endswith(b"\r") else raw
            n += 1
            offset += nl + 1 - pos
            pos = nl + 1
        rest = data[pos:]
    if rest:
        yield n, offset, rest[:-1] if rest.endswith(b"\r") else rest


def blob_lines(
    blobs: Any, key: str, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) of the blob's lines in bytes [start, end), numbered from
    `first_line`. Works on any store whose `open(key, start, end)` streams a range."""
    fh = blobs.open(key, start, end)
    try:

        def blocks() -> Iterator[bytes]:
            left = None if end is None else end - start
            while left is None or left > 0:
                block = fh.read(BLOCK if left is None else min(BLOCK, left))
                if not block:
                    return
                if left is not None:
                    left -= len(block)
                yield block

        yield from _split(blocks(), first_line, start)
    finally:
        fh.close()


def split_chunks(path: Path, chunk_lines: int) -> list[Chunk]:
    """The chunks of a (validated, local) batch file: `chunk_lines` requests each, the last one shorter.
    A chunk ends where the next one starts (its line ends included); the last one at the end of the file."""
    chunks: list[list[int]] = []
    requests = chunk_lines

    def blocks() -> Iterator[bytes]:
        with path.open("rb") as fh:
            while block := fh.read(BLOCK):
                yield block

    for n, offset, line in _split(blocks(), 1, 0):
        if not line or line.isspace():
            if chunks:
                chunks[-1][1] = n
            continue
        if requests >= chunk_lines:
            if chunks:
                chunks[-1][3] = offset
            chunks.append([n, n, offset, -1, 0])
            requests = 0
        requests += 1
        chunks[-1][1], chunks[-1][4] = n, requests
    if chunks:
        chunks[-1][3] = path.stat().st_size
    return [(c[0], c[1], c[2], c[3], c[4]) for c in chunks]
