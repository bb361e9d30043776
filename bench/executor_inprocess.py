"""Benchmark: one batch driven by the single-process `Executor` in this process — no HTTP, no client, no polls.

For A/B comparisons of the executor and the SQLite store under a loaded machine: `bench/server_echo.py`
measures what a client sees, but its figures swing with every poll and socket the load delays; this one
times only validate (in the validation worker) + execute + finalize, and reports this process's CPU seconds
(the validation worker's are not counted: its code is the same on both sides of such a comparison).

    python bench/executor_inprocess.py INPUT.jsonl          # e.g. a 50,000-request shard from `prepare`

Prints `cpu <s> wall <s>`; exits non-zero unless every request completed.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from coldbatch.engines.echo import EchoEngine
from coldbatch.server import checking
from coldbatch.server.executor import Executor
from coldbatch.server.scheduler import Slots
from coldbatch.store.blobs import LocalBlobStore
from coldbatch.store.sqlite import SqliteStore


def drive_once(src: Path, tmp: Path) -> tuple[float, float, dict[str, object]]:
    """(CPU s, wall s, the final batch row) of one batch over `src` in a fresh store under `tmp`."""
    store, blobs = SqliteStore(tmp / "db.sqlite3"), LocalBlobStore(tmp / "files")
    with blobs.writer("file-in") as fh, src.open("rb") as f:
        shutil.copyfileobj(f, fh)
    file_row = {"id": "file-in", "owner": "local", "filename": src.name, "purpose": "batch"}
    store.create_file({**file_row, "bytes": src.stat().st_size, "created_at": 1, "expires_at": None})
    now = int(time.time())
    batch = {"id": "batch_bench", "owner": "local", "endpoint": "/v1/chat/completions", "input_file_id": "file-in"}
    store.create_batch(
        {**batch, "completion_window": "24h", "status": "validating", "created_at": now, "expires_at": now + 86400}
    )
    engine = EchoEngine()
    executor = Executor(store, blobs, engine, Slots(engine.info.most_concurrency))
    pool = checking.worker_pool()  # started and warm before the clock starts, as a server's are at boot
    for f in [pool.submit(time.sleep, 0.5) for _ in range(getattr(checking, "WORKERS", 1))]:
        f.result()
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(executor.drive("batch_bench"))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    row = store.get_batch("batch_bench", None)
    store.close()
    return cpu, wall, row or {}


def main() -> int:
    src = Path(sys.argv[1])
    tmp = Path(tempfile.mkdtemp(prefix="cb-exec-"))
    try:
        cpu, wall, row = drive_once(src, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cpu {cpu:.2f} wall {wall:.2f} status {row.get('status')} completed {row.get('completed')}")
    return 0 if row.get("status") == "completed" and row.get("failed") == 0 else 1


if __name__ == "__main__":  # (the validation worker is spawned: it imports this module again)
    sys.exit(main())
