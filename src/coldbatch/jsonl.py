"""Batch JSONL files on disk: physical lines, and the typed lines of `protocol.lines` read from them.

The one reader of request and result files (it was in `validation.py`, and the runner, the server and
the estimator each looped over it and parsed by hand). Streaming: memory is O(longest line).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from coldbatch.protocol.lines import OutputLine, RequestLine


def iter_lines(path: Path) -> Iterator[bytes]:
    """Physical lines of a file as bytes, without `\\n` (or `\\r\\n`), in O(longest line) memory.

    The same lines as `core.validate.split_lines` gives for the whole file's bytes (a final `\\r` with
    no `\\n` after it is dropped too), so a file validates alike from disk and from memory.
    """
    with path.open("rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            yield raw[:-1] if raw.endswith(b"\r") else raw


def request_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of each non-blank line: the requests of a unit, unparsed, for callers
    that forward the bytes (a retry file, a sync send) or need only some of them."""
    for n, line in enumerate(iter_lines(path), 1):
        if line and not line.isspace():
            yield n, line


def read_requests(path: Path) -> Iterator[tuple[int, RequestLine]]:
    """(1-based line number, request) of each request of a validated input file, in file order."""
    parse = RequestLine.parse
    for n, line in request_lines(path):
        yield n, parse(line)


def read_outputs(path: Path) -> Iterator[OutputLine]:
    """Each line of a batch output or error file, from any provider."""
    parse = OutputLine.parse
    for _, line in request_lines(path):
        yield parse(line)
