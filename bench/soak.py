"""Soak test (issue 15): mixed uploads, batches, cancels, polls and hot calls against `coldbatch serve --engine
echo`, with `kill -9` of the server at random moments (restarted on the same data dir). Not part of the test
suite: run it by hand, `python bench/soak.py --minutes 30`.

Every `--sample` seconds it records the server's RSS, open file descriptors, the SQLite WAL size and the data
dir size; at the end it lets every batch finish and checks that each one's output and error files hold every
input custom_id exactly once (a cancelled batch's never-run lines included). Prints a markdown block for
docs/benchmarks.md; exits 1 if anything was lost or duplicated. Bounded: it stops after `--minutes`, plus at
most `--drain` seconds to let the last batches finish.

The server runs from a copy of `src/coldbatch` taken at start (PYTHONPATH), so edits to the working tree during
a long soak cannot change the code that a restart after a kill picks up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import free_port

TERMINAL = {"completed", "failed", "expired", "cancelled"}
START_S = 300  #: the most a (re)start may take before the soak gives up


class Server:
    def __init__(self, data: Path, port: int, src: Path) -> None:
        self.data, self.port, self.proc, self.src = data, port, None, src
        self.base = f"http://127.0.0.1:{port}"
        self.kills = 0
        self.restarts: list[float] = []  #: seconds from each start to a /health answer

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "echo",
            "--echo-latency",
            "0.005",
            "--allow-short-windows",
            "--data-dir",
            str(self.data),
            "--port",
            str(self.port),
        ]
        with (self.data.parent / "server.log").open("ab") as log:
            env = {**os.environ, "PYTHONPATH": str(self.src)}
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        started = time.time()
        while time.time() < started + START_S:  # generous: a niced server on a loaded machine starts slowly
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/health", timeout=5).status_code in (200, 503):
                    self.restarts.append(time.time() - started)
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited {self.proc.returncode} at start (see server.log)")
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /health within {START_S} s of its start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def sample(self) -> dict[str, float]:
        assert self.proc is not None
        pid = self.proc.pid
        rss = fds = 0
        with contextlib.suppress(OSError):
            rss = next(
                int(x.split()[1]) * 1024
                for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("VmRSS:")
            )
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        wal = self.data / "coldbatch.sqlite3-wal"
        size = sum(p.stat().st_size for p in self.data.rglob("*") if p.is_file())
        return {
            "rss_mb": rss / 2**20,
            "fds": fds,
            "wal_mb": (wal.stat().st_size if wal.exists() else 0) / 2**20,
            "data_mb": size / 2**20,
        }


def call(http: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response | None:
    """One request; None while the server is down (killed and not yet back)."""
    try:
        return http.request(method, path, **kw)
    except httpx.HTTPError:
        return None


def lines(tag: str, n: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{tag}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": f"{tag} line {i}"}]},
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def check(http: httpx.Client, batches: dict[str, set[str]]) -> tuple[int, list[str]]:
    """(batches checked, problems): every input id exactly once across output and error file."""
    problems = []
    for bid, ids in batches.items():
        b = http.get(f"/v1/batches/{bid}").json()
        if b["status"] == "failed" or (b["status"] == "cancelled" and b["in_progress_at"] is None):
            continue  # nothing ran (refused, or cancelled while validating): no result files, as on OpenAI
        seen: list[str] = []
        for key in ("output_file_id", "error_file_id"):
            if b.get(key):
                raw = http.get(f"/v1/files/{b[key]}/content").content
                seen += [json.loads(x)["custom_id"] for x in raw.splitlines() if x.strip()]
        if b["status"] == "expired" or sorted(seen) != sorted(ids):
            problems.append(
                f"{bid} {b['status']}: {len(seen)} results for {len(ids)} inputs, "
                f"{len(seen) - len(set(seen))} repeated, {len(ids - set(seen))} missing"
            )
    return len(batches), problems


def act(http: httpx.Client, rng: random.Random, batches: dict[str, set[str]], ops: dict[str, int]) -> None:
    """One random client action: upload + batch (8 %), cancel (2 %), poll (50 %), hot call (40 %)."""
    r = rng.random()
    if r < 0.08:
        tag, n = f"u{len(batches)}", rng.choice([10, 200, 2_000, 10_000])
        f = call(http, "POST", "/v1/files", files={"file": (f"{tag}.jsonl", lines(tag, n))}, data={"purpose": "batch"})
        if f is not None and f.status_code == 200:
            b = call(
                http,
                "POST",
                "/v1/batches",
                json={"input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            )
            if b is not None and b.status_code == 200:
                batches[b.json()["id"]] = {f"{tag}-{i}" for i in range(n)}
                ops["upload+batch"] += 1
    elif r < 0.10 and batches:
        call(http, "POST", f"/v1/batches/{rng.choice(list(batches))}/cancel")
        ops["cancel"] += 1
    elif r < 0.60:
        call(http, "GET", f"/v1/batches/{rng.choice(list(batches))}" if batches and r < 0.4 else "/v1/batches?limit=20")
        ops["poll"] += 1
    else:
        call(
            http,
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]},
        )
        ops["hot"] += 1


def drain(http: httpx.Client, batches: dict[str, set[str]], seconds: float) -> None:
    """Wait (bounded) until every batch is terminal."""
    end = time.time() + seconds
    while time.time() < end:
        statuses = [(call(http, "GET", f"/v1/batches/{bid}") or httpx.Response(599)) for bid in batches]
        if all(r.status_code == 200 and r.json()["status"] in TERMINAL for r in statuses):
            return
        time.sleep(1)


def report(
    args: argparse.Namespace,
    ops: dict[str, int],
    kills: int,
    checked: int,
    problems: list[str],
    samples: list[tuple[float, dict[str, float]]],
    restarts: list[float],
) -> None:
    print(f"### soak: {args.minutes:g} min, kill -9 every ~{args.kill_every:g} s (`python bench/soak.py`)\n")
    print(f"- operations: {ops}; server kills: {kills}; batches checked: {checked}")
    if restarts:
        print(f"- start to first /health answer: median {statistics.median(restarts):.1f} s, max {max(restarts):.1f} s")
    print("\n| minute | RSS | open fds | WAL | data dir |\n|---:|---:|---:|---:|---:|")
    for at, x in samples[:: max(1, int(60 / args.sample))] + samples[-1:]:
        print(
            f"| {at / 60:.1f} | {x['rss_mb']:.0f} MB | {x['fds']:.0f} | {x['wal_mb']:.1f} MB | {x['data_mb']:.0f} MB |"
        )
    print(f"\n- lost or duplicated: {'none' if not problems else len(problems)}")
    for p in problems[:20]:
        print(f"  - {p}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--sample", type=float, default=10, help="seconds between samples")
    ap.add_argument("--kill-every", type=float, default=45, help="mean seconds between kill -9s (0: never)")
    ap.add_argument("--drain", type=float, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--src",
        help="copy the server's code from DIR/coldbatch (default: this tree's src/), e.g. a "
        "`git archive HEAD src | tar -x` when others are editing the tree",
    )
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="cb-soak-"))
    src = work / "src"
    shutil.copytree(
        Path(args.src or Path(__file__).resolve().parents[1] / "src") / "coldbatch",
        src / "coldbatch",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    server = Server(work / "data", free_port(), src)
    server.data.mkdir()
    server.start()
    batches: dict[str, set[str]] = {}
    samples: list[tuple[float, dict[str, float]]] = []
    ops = {"upload+batch": 0, "cancel": 0, "poll": 0, "hot": 0}
    t0 = time.time()
    end, next_sample = t0 + args.minutes * 60, t0
    next_kill = t0 + rng.expovariate(1 / args.kill_every) if args.kill_every else float("inf")
    http = httpx.Client(base_url=server.base, timeout=30)
    try:
        while time.time() < end:
            now = time.time()
            if now >= next_sample:
                samples.append((now - t0, server.sample()))
                next_sample += args.sample
                print(
                    f"{(now - t0) / 60:.1f} min {samples[-1][1]} {ops} kills {server.kills}",
                    file=sys.stderr,
                    flush=True,
                )
            if now >= next_kill:
                server.kill()
                server.start()
                next_kill = now + rng.expovariate(1 / args.kill_every)
            act(http, rng, batches, ops)
            time.sleep(0.01)
        drain(http, batches, args.drain)
        samples.append((time.time() - t0, server.sample()))
        checked, problems = check(http, batches)
    except Exception as exc:  # report what was seen, and keep the data dir and server log to look at
        checked, problems = 0, [f"soak stopped at {(time.time() - t0) / 60:.1f} min: {exc}; kept {work}"]
    finally:
        http.close()
        server.stop()
    if not problems:
        shutil.rmtree(work, ignore_errors=True)
    report(args, ops, server.kills, checked, problems, samples, server.restarts)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
