"""The worker protocol's frames over a real, unbuffered pipe (what the pool uses)."""

from __future__ import annotations

import os
import threading

import pytest

from coldbatch.engines import frames


def test_a_frame_larger_than_the_pipe_buffer_arrives_whole() -> None:
    """An embeddings answer of 100 vectors is ~400 KB; a pipe hands it over in 64 KiB pieces."""
    r, w = os.pipe()
    message = {"op": "done", "id": 1, "results": [[200, {"data": [[0.123456789] * 384] * 100}, {}]]}
    with os.fdopen(r, "rb", buffering=0) as reader, os.fdopen(w, "wb", buffering=0) as writer:
        t = threading.Thread(target=frames.write_frame, args=(writer, message))
        t.start()
        got = frames.read_frame(reader)
        t.join()
    assert got == message


def test_a_stream_that_ends_mid_frame_is_broken() -> None:
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as reader:
        with os.fdopen(w, "wb", buffering=0) as writer:
            writer.write((1000).to_bytes(4, "little") + b"{}")
        with pytest.raises(frames.BrokenStream):
            frames.read_frame(reader)
