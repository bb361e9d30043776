"""Supervised engine worker processes, seen by the server as one Engine.

Why: an engine that runs native code (llama.cpp) can die in ways Python cannot catch — a segfault in a
CPU-specific kernel, an abort, the OOM killer. In-process, that kills the server, every batch's
progress in memory and the client of `coldbatch run`. Out of process, it costs one worker:

- `WorkerPool` starts N workers (`python -m coldbatch.engines.worker`, protocol in `engines/frames.py`)
  and keeps N alive: a worker that dies is replaced. Calls go to the least-busy live worker.
- The requests a dead worker held are retried once, each alone on an idle worker (so one poison
  request cannot take innocent ones down with it twice); a request that kills its second worker too is
  answered 500 `engine_crashed`: in a batch it lands in the error file and the batch completes; a hot
  request gets the 500 with that code.
- A worker slot that crashes before answering anything `max_start_failures` times in a row is given up,
  reported once in the log, and shown by `health()` (the server's /health); when every slot is given up,
  requests are answered 503 `engine_unavailable` instead of restarting forever.
- A worker that cannot build its engine (a bad option, a file that is not a model) reports why, and the
  pool refuses to start with that message (`ConfigError`).

Workers read the end of their input as "the supervisor is gone" and exit, so even a `kill -9` of the
server leaves no worker behind. Pipes are served by threads, so the pool works from any event loop
(the embedded server runs its own on a thread).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any, Final

from coldbatch.engines import frames, registry
from coldbatch.engines.base import Engine, EngineInfo, Result, error_result, settle_from_thread
from coldbatch.errors import ConfigError

logger = logging.getLogger(__name__)

CRASHED: Final = "engine_crashed"
UNAVAILABLE: Final = "engine_unavailable"
_WORKER_ARGV: Final = (sys.executable, "-X", "faulthandler", "-m", "coldbatch.engines.worker")


class WorkerDied(Exception):
    """The worker holding a call died before answering it."""


def crashed_result() -> Result:
    return error_result(
        500,
        "The engine worker crashed twice while running this request (a native crash, "
        "an abort or an out-of-memory kill); it was not answered.",
        type_="server_error",
        code=CRASHED,
    )


def unavailable_result(reason: str) -> Result:
    return error_result(503, f"No engine worker is running: {reason}", type_="server_error", code=UNAVAILABLE)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_engine(name: str, *, workers: int | None = None, only: Sequence[str] | None = None, **options: Any) -> Engine:
    """The engine `name`, in worker processes or (workers=0, pure-Python engines only) in this process.

    `workers=None` takes the engine's own default (`default_workers(cores)` on its class; native engines
    at least 1, others 0). Options are checked against the engine's constructor before anything starts.

    Raises:
        ConfigError: an unknown engine or option, a native engine asked to run in-process, or workers
            that cannot start (with the worker's own message).
    """
    factory = registry.load(name, only)
    registry.check_options(name, factory, options)
    native = bool(getattr(factory, "native_code", False))
    if workers is None:
        default = getattr(factory, "default_workers", None)
        workers = default(usable_cores()) if default else (1 if native else 0)
    if workers < 0:
        raise ConfigError(f"engine workers must be 0 or more, not {workers}")
    if workers == 0:
        if native:
            raise ConfigError(
                f"the {name} engine runs native code and must run in worker processes: "
                "use --engine-workers 1 or more (a crash there must not take the server down)"
            )
        return factory(**options)  # type: ignore[no-any-return]
    extra = getattr(factory, "worker_options", None)
    defaults = extra(workers, usable_cores()) if extra else {}
    return WorkerPool(name, {**defaults, **options}, workers=workers, plugins=only)


class _Worker:
    """One worker process and the threads that serve its pipes."""

    def __init__(self, slot: int, start: dict[str, Any]) -> None:
        self.slot = slot
        self.proc = subprocess.Popen(
            _WORKER_ARGV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=False,
        )
        self.pid = self.proc.pid
        self.info: EngineInfo | None = None
        self.failed: str | None = None  #: the worker's own reason, when it could not build its engine
        self.answered = 0  #: calls answered; a worker that dies at 0 counts as failing to start
        self.inflight = 0  #: requests sent and not answered
        self.exclusive = False  #: running a retry alone
        self.dead = False
        self.died_alone = False
        self.ready = threading.Event()  # set on ready, failed or death
        self.exited = threading.Event()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[list[Result]]]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._outbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._outbox.put(start)
        for target, label in ((self._read, "out"), (self._write, "in"), (self._forward_stderr, "err")):
            threading.Thread(target=target, name=f"engine-worker-{slot}-{label}", daemon=True).start()

    # -- calls (event loop side) -----------------------------------------------------------------------
    async def call(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Result]] = loop.create_future()
        with self._lock:
            if self.dead:
                raise WorkerDied(f"worker {self.pid} is dead")
            call_id = next(self._ids)
            self._pending[call_id] = (loop, future)
            self.inflight += len(bodies)
        self._outbox.put({"op": "call", "id": call_id, "endpoint": endpoint, "bodies": bodies})
        try:
            return await future
        finally:
            with self._lock:
                self._pending.pop(call_id, None)
                self.inflight -= len(bodies)

    def stop(self) -> None:
        self._outbox.put({"op": "stop"})
        self._outbox.put(None)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def exit_reason(self) -> str:
        code = self.proc.returncode
        if code is None:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit code {code}"

    # -- pipe threads ------------------------------------------------------------------------------------
    def _read(self) -> None:
        stream: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        try:
            first = frames.read_frame(stream)
            if first.get("op") == "ready":
                self.info = frames.info_from_json(first["info"])
            else:
                self.failed = str(first.get("error") or first)
            self.ready.set()
            while self.failed is None:
                self._settle(frames.read_frame(stream))
        except frames.BrokenStream:
            pass
        self._die()

    def _settle(self, message: dict[str, Any]) -> None:
        with self._lock:
            waiter = self._pending.pop(int(message.get("id", -1)), None)
            self.answered += 1
        if waiter is None:
            return
        loop, future = waiter
        results = [frames.result_from_json(r) for r in message["results"]]
        settle_from_thread(loop, future, results)

    def _die(self) -> None:
        with self._lock:
            self.dead = True
            self.died_alone = self.exclusive  # running a retry alone: that request, not the worker, is at fault
            pending, self._pending = self._pending, {}
        self.ready.set()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        for loop, future in pending.values():
            settle_from_thread(loop, future, WorkerDied(self.exit_reason()))
        self.exited.set()

    def _write(self) -> None:
        stream: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        try:
            while (message := self._outbox.get()) is not None:
                frames.write_frame(stream, message)
        except OSError:
            pass  # the worker is gone; _read notices and fails the calls
        with contextlib.suppress(OSError):
            stream.close()

    def _forward_stderr(self) -> None:
        stream: IO[bytes] = self.proc.stderr  # type: ignore[assignment]
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(line)
            print(f"[engine worker {self.pid}] {line}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            stream.close()


class WorkerPool:
    """`workers` engine worker processes behind the Engine protocol (see the module docstring).

    Raises:
        ConfigError: from the constructor, when the workers cannot start (the worker's reason).
    """

    def __init__(
        self,
        engine: str,
        options: dict[str, Any],
        *,
        workers: int,
        plugins: Sequence[str] | None = None,
        start_timeout: float = 300.0,
        max_start_failures: int = 3,
    ) -> None:
        if workers < 1:
            raise ConfigError("a worker pool needs at least one worker")
        self.engine_name, self.workers = engine, workers
        self.start_timeout, self.max_start_failures = start_timeout, max_start_failures
        self._start = {
            "op": "start",
            "engine": engine,
            "options": options,
            "plugins": list(plugins) if plugins is not None else None,
        }
        self._live: dict[int, _Worker] = {}
        self._broken: dict[int, str] = {}  # slot -> why it was given up
        self._first_error: str | None = None
        self._changed = threading.Condition()
        self._closing = False
        self.restarts = 0
        self.crashes = 0
        self._threads = [
            threading.Thread(target=self._keep, args=(slot,), name=f"engine-supervisor-{slot}", daemon=True)
            for slot in range(workers)
        ]
        for t in self._threads:
            t.start()
        self.info = self._wait_started()

    # -- start-up ------------------------------------------------------------------------------------
    def _wait_started(self) -> EngineInfo:
        deadline = time.monotonic() + self.start_timeout
        with self._changed:
            while len(self._live) + len(self._broken) < self.workers and self._first_error is None:
                if not self._changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    break
            first = next(iter(self._live.values()), None)
            error = self._first_error or (next(iter(self._broken.values())) if first is None and self._broken else None)
        if error is not None or first is None or first.info is None:
            self.close()
            raise ConfigError(
                f"the {self.engine_name} engine could not start in a worker process: "
                f"{error or f'no worker was ready within {self.start_timeout:g} s'}"
            )
        info = first.info
        return EngineInfo(
            name=info.name,
            endpoints=info.endpoints,
            models=info.models,
            max_concurrency=info.max_concurrency * self.workers,
            fixture=info.fixture,
            endpoint_concurrency=tuple((e, n * self.workers) for e, n in info.endpoint_concurrency),
        )

    def _keep(self, slot: int) -> None:
        """Keep one worker slot alive until the pool closes or the slot fails to start too often."""
        failures = 0
        while not self._closing:
            worker = _Worker(slot, self._start)
            if not worker.ready.wait(self.start_timeout):
                worker.kill()
            worker.ready.wait()
            if worker.failed is not None:  # the engine itself cannot be built: restarting will not help
                self._give_up(slot, worker.failed, config=True)
                worker.kill()
                return
            if worker.info is not None and not worker.dead:
                with self._changed:
                    self._live[slot] = worker
                    self._changed.notify_all()
                if self._closing:  # close() ran while this one was starting: it did not see it
                    worker.stop()
            worker.exited.wait()
            with self._changed:
                self._live.pop(slot, None)
            if self._closing:
                return
            # A worker that dies before answering anything (and not on a request retried alone, which is
            # that request's fault) counts towards giving the slot up: it cannot start, or cannot run at all.
            failures = failures + 1 if worker.answered == 0 and not worker.died_alone else 0
            self.crashes += 1
            reason = f"worker {worker.pid} {worker.exit_reason()}" + _tail(worker)
            if failures and failures >= self.max_start_failures:
                self._give_up(slot, f"{reason} ({failures} times in a row before answering anything)")
                return
            logger.warning(
                "engine worker died; starting a new one: %s",
                reason,
                extra={"action": "engine_worker_died", "slot": slot, "pid": worker.pid},
            )
            self.restarts += 1
            time.sleep(min(2.0, 0.1 * 2 ** (failures - 1)))

    def _give_up(self, slot: int, why: str, *, config: bool = False) -> None:
        with self._changed:
            self._broken[slot] = why
            if config and self._first_error is None:
                self._first_error = why
            self._changed.notify_all()
        if not config:
            logger.error(
                "engine worker slot %d given up: %s",
                slot,
                why,
                extra={"action": "engine_worker_given_up", "slot": slot},
            )

    # -- the Engine protocol ---------------------------------------------------------------------------
    async def complete(self, endpoint: str, body: dict[str, Any]) -> Result:
        return (await self.complete_many(endpoint, [body]))[0]

    async def complete_many(self, endpoint: str, bodies: Sequence[dict[str, Any]]) -> list[Result]:
        """Answer `bodies` on one worker; if it dies, retry each request once, alone, on an idle worker."""
        try:
            return await self._call(endpoint, list(bodies), solo=False)
        except WorkerDied:
            pass
        return list(await asyncio.gather(*(self._retry(endpoint, b) for b in bodies)))

    async def _retry(self, endpoint: str, body: dict[str, Any]) -> Result:
        try:
            return (await self._call(endpoint, [body], solo=True))[0]
        except WorkerDied:
            return crashed_result()

    async def _call(self, endpoint: str, bodies: list[dict[str, Any]], *, solo: bool) -> list[Result]:
        worker = await self._pick(solo)
        if worker is None:
            return [unavailable_result(self._why_unavailable())] * len(bodies)
        try:
            return await worker.call(endpoint, bodies)
        finally:
            if solo:
                worker.exclusive = False

    async def _pick(self, solo: bool) -> _Worker | None:
        """The least-busy live worker; None: none will come. For a retry (`solo`) the worker is reserved at
        once (no new calls go to it, so a busy server cannot starve the retry) and handed over once idle."""
        while True:
            candidates = [w for w in list(self._live.values()) if not w.dead and not w.exclusive]
            if candidates:
                worker = min(candidates, key=lambda w: w.inflight)
                if not solo:
                    return worker
                worker.exclusive = True
                while worker.inflight and not worker.dead:
                    await asyncio.sleep(0.002)
                if not worker.dead:
                    return worker
                continue
            if len(self._broken) >= self.workers or self._closing:
                return None
            await asyncio.sleep(0.005)

    def _why_unavailable(self) -> str:
        if self._closing:
            return "the server is shutting down"
        return "; ".join(f"slot {s}: {why}" for s, why in sorted(self._broken.items())) or "none started"

    def health(self) -> dict[str, Any]:
        live = sorted(w.pid for w in list(self._live.values()) if not w.dead)
        status = (
            "ok" if len(live) == self.workers else ("unavailable" if len(self._broken) >= self.workers else "degraded")
        )
        return {
            "status": status,
            "workers": self.workers,
            "live": len(live),
            "pids": live,
            "restarts": self.restarts,
            "crashes": self.crashes,
            "given_up": {str(s): why for s, why in sorted(self._broken.items())},
        }

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every worker (in-flight calls finish first, up to `timeout`), then kill what is left."""
        self._closing = True
        workers = list(self._live.values())
        for w in workers:
            w.stop()
        deadline = time.monotonic() + timeout
        for w in workers:
            if not w.exited.wait(max(0.0, deadline - time.monotonic())):
                w.kill()
                w.exited.wait(5)
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))


def _tail(worker: _Worker) -> str:
    lines = [ln for ln in worker.stderr_tail if ln.strip()][-3:]
    return (": " + " | ".join(lines)) if lines else ""


__all__ = ["CRASHED", "UNAVAILABLE", "WorkerDied", "WorkerPool", "open_engine"]
