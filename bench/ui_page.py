"""Benchmark: dashboard page loads with 10,000 batches in the store (goal: < 300 ms server time, paged).

A fresh data dir is filled with `--batches` batches of one API key (plus as many of a second key, so the
owner filter has work to do): a mix of statuses, each with its status events, written straight into the
store. Then `coldbatch serve --engine echo --api-key …` starts on it (a subprocess), and a logged-in
client loads the pages `--loads` times:

- the batches page: GET /ui/ (HTML), app.js, style.css, /ui/api/batches?page=1 and /ui/api/overview,
- the last page of batches (/ui/api/batches?page=N), a status-filtered page, one batch's page.

For each JSON call it reports the server time from the `Server-Timing` header (the handler, store
queries included) and for every request the client round trip on loopback (an upper bound of the
server's time: it also holds HTTP parsing and the client). Prints one markdown block with PASS/FAIL.

    python bench/ui_page.py                      # 10,000 batches, 30 loads
    python bench/ui_page.py --batches 100000 --loads 10
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _common import free_port

from coldbatch.server.app import owner_id
from coldbatch.store.sqlite import SqliteStore

GOAL_MS = 300.0
KEY, OTHER = "sk-bench", "sk-other"
STATUS_PATHS = {  # final status -> the statuses it went through
    "completed": ["in_progress", "finalizing", "completed"],
    "failed": ["failed"],
    "expired": ["in_progress", "expired"],
    "cancelled": ["in_progress", "cancelling", "cancelled"],
    "in_progress": ["in_progress"],
}


def fill(data_dir: Path, batches: int) -> None:
    """`batches` batches for each of two keys, with their status events (straight into the store)."""
    data_dir.mkdir(parents=True)
    store = SqliteStore(data_dir / "coldbatch.sqlite3")
    rnd, now = random.Random(1), int(time.time()) - 86_400
    db = store.db
    db.execute("BEGIN")
    for i in range(batches * 2):
        owner = owner_id(KEY if i % 2 == 0 else OTHER)
        final = rnd.choices(list(STATUS_PATHS), weights=[80, 5, 3, 7, 5])[0]
        created, total = now + i, rnd.randint(1, 50_000)
        row = {
            "id": f"batch_bench{i:08d}",
            "owner": owner,
            "endpoint": "/v1/chat/completions",
            "model": "gpt-4o-mini",
            "input_file_id": f"file-bench{i:08d}",
            "completion_window": "24h",
            "status": "validating",
            "created_at": created,
            "expires_at": created + 86_400,
            "metadata": {"description": f"job {i}"},
        }
        store.create_batch(row)
        prev, at = "validating", created
        for status in STATUS_PATHS[final]:
            at += rnd.randint(1, 600)
            db.execute("INSERT INTO batch_events VALUES (?, ?, ?, ?, NULL)", (row["id"], prev, status, at))
            prev = status
        done = total if final == "completed" else rnd.randint(0, total)
        db.execute(
            f"UPDATE batches SET status = ?, total = ?, completed = ?, {final}_at = ? WHERE id = ?",
            (final, total, done, at, row["id"]),
        )
    db.execute("COMMIT")
    store.close()


@contextlib.contextmanager
def server(data_dir: Path, port: int, log: Path) -> Iterator[str]:
    cmd = [
        sys.executable,
        "-m",
        "coldbatch",
        "serve",
        "--engine",
        "echo",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--api-key",
        KEY,
        "--api-key",
        OTHER,
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"server did not come up in 30 s; see {log}")
            time.sleep(0.05)
        yield root
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timed(
    http: httpx.Client, path: str, server_ms: dict[str, list[float]], wall_ms: dict[str, list[float]], name: str
) -> float:
    t = time.perf_counter()
    r = http.get(path)
    wall = (time.perf_counter() - t) * 1000
    r.raise_for_status()
    wall_ms.setdefault(name, []).append(wall)
    timing = r.headers.get("server-timing")
    if timing:
        server_ms.setdefault(name, []).append(float(timing.split("dur=")[1]))
    return wall


PAGE = (
    ("/ui/", "GET /ui/ (HTML)"),
    ("/ui/static/app.js", "app.js"),
    ("/ui/static/style.css", "style.css"),
    ("/ui/api/batches?page=1", "api/batches page 1"),
    ("/ui/api/overview", "api/overview"),
)


def measure(root: str, batches: int, loads: int) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Server and round-trip times per request, and the server time of each whole page load (summed)."""
    server_ms: dict[str, list[float]] = {}
    wall_ms: dict[str, list[float]] = {}
    page_ms: list[float] = []
    last = (batches + 24) // 25
    with httpx.Client(base_url=root, timeout=30) as http:
        assert http.get("/ui/", params={"key": KEY}).status_code == 303  # logs in: the session cookie
        for _ in range(loads):
            for path, name in PAGE:
                timed(http, path, server_ms, wall_ms, name)
            page_ms.append(sum(server_ms[name][-1] for _, name in PAGE))
            timed(http, f"/ui/api/batches?page={last}", server_ms, wall_ms, f"api/batches page {last} (last)")
            timed(http, "/ui/api/batches?status=cancelled&page=2", server_ms, wall_ms, "api/batches cancelled p2")
            timed(http, "/ui/api/batches/batch_bench00004242", server_ms, wall_ms, "api/batches/{id}")
    return server_ms, wall_ms, page_ms


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=10_000, help="batches of the key (another key has as many)")
    ap.add_argument("--loads", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cb-ui-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        t = time.perf_counter()
        fill(data_dir, args.batches)
        fill_s = time.perf_counter() - t
        with server(data_dir, free_port(), Path(tmp) / "server.log") as root:
            server_ms, wall_ms, page_ms = measure(root, args.batches, args.loads)
    worst = max(max(v) for v in server_ms.values())
    print("```")
    print(f"command:   python bench/ui_page.py --batches {args.batches} --loads {args.loads}")
    print(f"machine:   nproc={len(os.sched_getaffinity(0))}, {platform.machine()}, {platform.platform()}")
    print(f"date:      {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC; load average {os.getloadavg()[0]:.2f}")
    print(f"store:     {args.batches:,} batches of the key + {args.batches:,} of another (filled in {fill_s:.1f} s)")
    print(
        f"page load: /ui/ + app.js + style.css + page 1 + overview, server times summed: "
        f"median {statistics.median(page_ms):.1f} ms, p95 {p(page_ms, 0.95):.1f} ms, max {max(page_ms):.1f} ms"
    )
    print(f"{'request':<34} {'server ms (median / p95 / max)':>32} {'round trip ms (median / p95)':>30}")
    for name, walls in wall_ms.items():
        srv = server_ms.get(name)
        s = f"{statistics.median(srv):.2f} / {p(srv, 0.95):.2f} / {max(srv):.2f}" if srv else "—"
        print(f"{name:<34} {s:>32} {statistics.median(walls):>18.2f} / {p(walls, 0.95):.2f}")
    verdict = "PASS" if max(page_ms) < GOAL_MS else "FAIL"
    print(
        f"goal:      every page load < {GOAL_MS:.0f} ms server time: {verdict} "
        f"(worst page load {max(page_ms):.1f} ms, worst single request {worst:.2f} ms)"
    )
    print("```")


if __name__ == "__main__":
    main()
