"""An engine worker process: `python -m coldbatch.engines.worker`, speaking `engines/frames.py` on stdio.

Native engine code (llama.cpp) can crash the process it runs in: a segfault, an abort, the OOM killer.
So the server never loads it: it starts workers (`engines/pool.py`) and talks to them over pipes. A
worker builds one engine from the `start` frame, answers `call` frames concurrently (up to what the
caller sends), and exits as soon as its input ends, so a killed server never leaves a worker behind.

The protocol owns the real stdout: file descriptor 1 is pointed at stderr before the engine loads, so
a library that prints cannot corrupt a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from typing import IO, Any

from coldbatch.engines import base, frames, registry
from coldbatch.engines.base import Engine, Result, error_result
from coldbatch.errors import ColdbatchError


def main() -> int:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints (a library, llama.cpp) go to stderr, never into a frame
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    try:
        start = frames.read_frame(inp)
    except frames.BrokenStream:
        return 0
    base.IN_WORKER_PROCESS = True
    try:
        engine = registry.create(str(start["engine"]), only=start.get("plugins"), **(start.get("options") or {}))
    except Exception as exc:  # any failure to build the engine is reported, then the worker exits
        error = str(exc) if isinstance(exc, ColdbatchError) else f"{type(exc).__name__}: {exc}"
        frames.write_frame(out, {"op": "failed", "error": error})
        return 3
    frames.write_frame(out, {"op": "ready", "pid": os.getpid(), "info": frames.info_to_json(engine.info)})
    asyncio.run(_serve(engine, inp, out))
    return 0


async def _serve(engine: Engine, inp: IO[bytes], out: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    threading.Thread(target=_read_forever, args=(inp, loop, inbox), name="worker-input", daemon=True).start()
    calls: set[asyncio.Task[None]] = set()
    while (message := await inbox.get()).get("op") != "stop":
        if message.get("op") == "call":
            task = asyncio.create_task(_answer(engine, message, out))
            calls.add(task)
            task.add_done_callback(calls.discard)
    await asyncio.gather(*calls, return_exceptions=True)
    with contextlib.suppress(Exception):
        await engine.aclose()


def _read_forever(inp: IO[bytes], loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        try:
            message = frames.read_frame(inp)
        except frames.BrokenStream:
            os._exit(0)  # the supervisor is gone: nobody will read our answers
        loop.call_soon_threadsafe(inbox.put_nowait, message)


async def _answer(engine: Engine, message: dict[str, Any], out: IO[bytes]) -> None:
    endpoint, bodies = str(message["endpoint"]), list(message["bodies"])
    try:
        many = getattr(engine, "complete_many", None)
        if many is not None and len(bodies) > 1:
            results = list(await many(endpoint, bodies))
        else:
            results = list(await asyncio.gather(*(engine.complete(endpoint, b) for b in bodies)))
    except Exception as exc:  # the engine is broken for these requests: answer, never lose the call
        results = [_engine_error(exc)] * len(bodies)
    frames.write_frame(out, {"op": "done", "id": message["id"], "results": [frames.result_to_json(r) for r in results]})


def _engine_error(exc: Exception) -> Result:
    return error_result(
        500, f"the engine failed: {type(exc).__name__}: {exc}", type_="server_error", code="engine_error"
    )


if __name__ == "__main__":
    sys.exit(main())
