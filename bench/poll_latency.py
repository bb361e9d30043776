"""Benchmark: how fast polls are answered while a big echo batch runs and the machine is busy (issue 15, item 6).

One `coldbatch serve --engine echo --echo-latency L` process; one batch of `--rows` chat requests; `--pollers`
clients polling (half GET /v1/batches/{id}, half GET /v1/batches?limit=20, each waiting `--every` seconds
between polls) from `--poll-procs` processes, by hand-written HTTP/1.1 on kept-alive sockets (`--client
lean`, the default: the pollers stand for clients on other machines, so their own CPU should not be the
load; `--client httpx --poll-procs 5` is how figures before 2026-12-04 were taken); and
`--load` busy-looping processes that compete for the CPU. Everything stops by itself: the busy loops and the
pollers end with the batch or after `--cap` seconds, whichever is first.

It runs the batch twice: without pollers (the baseline batch time), then with them, and prints latency
percentiles per kind and the batch time's change, as a markdown block for docs/benchmarks.md.

    python bench/poll_latency.py                                  # 50,000 rows, 50 pollers/0.1 s, 4 busy processes
    python bench/poll_latency.py --every 1                        # the same pollers, each polling once a second
    python bench/poll_latency.py --rows 20000 --pollers 30 --load 0

A/B against other code: `--src DIR` runs the server from DIR/coldbatch (e.g. `git archive REV src/coldbatch`
unpacked), `--plain-loop` hides uvloop and httptools from it (uvicorn then uses asyncio's loop and h11, as a
server installed without them does).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from _common import free_port, start_echo_server

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def busy(until: float) -> None:
    """A CPU hog that stops by itself."""
    x = 0
    while time.time() < until:
        x += 1


def poller_proc(
    base: str,
    batch_id: str,
    n: int,
    every: float,
    until: float,
    out: mp.Queue,  # type: ignore[type-arg]
    stop_when_done: bool = True,
    lean: bool = False,
) -> None:
    async def one(i: int, client: httpx.AsyncClient) -> list[tuple[str, float, float]]:
        kind, path = ("retrieve", f"/v1/batches/{batch_id}") if i % 2 == 0 else ("list", "/v1/batches?limit=20")
        seen: list[tuple[str, float, float]] = []
        while time.time() < until:
            t, at = time.perf_counter(), time.time()
            r = await client.get(path)
            # a poller's first poll also opens its connection (50 at once, as the batch starts): kept apart
            seen.append((kind if seen else kind + "-first", at, time.perf_counter() - t))
            done = r.json().get("status") in TERMINAL or (kind == "list" and r.json()["data"][0]["status"] in TERMINAL)
            if done and stop_when_done:
                break
            await asyncio.sleep(every)
        return seen

    async def main() -> list[tuple[str, float, float]]:
        if lean:
            parts = await asyncio.gather(*(lean_one(i) for i in range(n)))
            return [x for p in parts for x in p]
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            parts = await asyncio.gather(*(one(i, client) for i in range(n)))
        return [x for p in parts for x in p]

    async def lean_one(i: int) -> list[tuple[str, float, float]]:
        """The same poll over one kept-alive HTTP/1.1 connection, written and read by hand: ~20x less client
        CPU than httpx, so on a small machine the pollers' own CPU does not become the load being measured."""
        kind, path = ("retrieve", f"/v1/batches/{batch_id}") if i % 2 == 0 else ("list", "/v1/batches?limit=20")
        host, port = base.rsplit("/", 1)[1].split(":")
        request = f"GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: application/json\r\n\r\n".encode()
        seen: list[tuple[str, float, float]] = []
        reader, writer = None, None
        while time.time() < until:
            t, at = time.perf_counter(), time.time()
            if writer is None:
                reader, writer = await asyncio.open_connection(host, int(port))
            assert reader is not None
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            body = orjson.loads(await reader.readexactly(length))
            seen.append((kind if seen else kind + "-first", at, time.perf_counter() - t))
            done = body.get("status") in TERMINAL or (kind == "list" and body["data"][0]["status"] in TERMINAL)
            if done and stop_when_done:
                break
            await asyncio.sleep(every)
        if writer is not None:
            writer.close()
        return seen

    seen = asyncio.run(main())
    out.put((seen, time.process_time()))  # and this poller process's CPU seconds


def server_env(args: argparse.Namespace, work: Path) -> dict[str, str]:
    """The server's environment: its code from `--src`, and with `--plain-loop` stub modules that make
    `import uvloop` / `import httptools` fail, so uvicorn falls back to asyncio and h11."""
    path = []
    if args.plain_loop:
        stubs = work / "no-uvloop"
        for name in ("uvloop", "httptools"):
            (stubs / name).mkdir(parents=True, exist_ok=True)
            (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by --plain-loop')\n")
        path.append(str(stubs))
    if args.src:
        path.append(str(Path(args.src).resolve()))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)} if path else dict(os.environ)


def start_server(data: Path, port: int, latency: float, env: dict[str, str]) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True)
    return start_echo_server(data, port, latency, data / "server.log", env)


def batch_input(rows: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": f"Review {i}: fine."}],
                },
            }
        )
        + b"\n"
        for i in range(rows)
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    args: argparse.Namespace, work: Path, pollers: int, load: int, floor: float = 0.0
) -> tuple[float, list[tuple[str, float, float]], dict[str, float]]:
    """One batch of `--rows` polled by `pollers`; with `floor` seconds instead, the same pollers and load
    against the server once a 10-line batch is done (the latency an idle server gets: the OS's share)."""
    port = free_port()
    data = work / f"data-{port}"
    server = start_server(data, port, args.latency, server_env(args, work))
    base = f"http://127.0.0.1:{port}"
    hogs: list[mp.Process] = []
    procs: list[mp.Process] = []
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            rows = 10 if floor else args.rows
            f = http.post("/v1/files", files={"file": ("in.jsonl", batch_input(rows))}, data={"purpose": "batch"})
            until = time.time() + args.cap
            hogs = [mp.Process(target=busy, args=(until,)) for _ in range(load)]
            for h in hogs:
                h.start()
            b = http.post(
                "/v1/batches",
                json={"input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            ).json()
            while floor and http.get(f"/v1/batches/{b['id']}").json()["status"] not in TERMINAL:
                time.sleep(0.2)
            if floor:
                until = time.time() + floor
            started, started_at = time.perf_counter(), time.time()
            q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
            k = args.poll_procs
            per = [pollers // k + (1 if i < pollers % k else 0) for i in range(k)]
            procs = [
                mp.Process(
                    target=poller_proc, args=(base, b["id"], n, args.every, until, q, not floor, args.client == "lean")
                )
                for n in per
                if n
            ]
            for p in procs:
                p.start()
            spy = None
            if args.profile and pollers:  # py-spy samples the server while it is polled (raw collapsed stacks)
                spy_cmd = [
                    shutil.which("py-spy") or "py-spy",
                    "record",
                    "-p",
                    str(server.pid),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    args.profile,
                    "--nonblocking",
                    "-d",
                    str(int(args.cap)),
                ]
                spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while time.time() < until:
                status = http.get(f"/v1/batches/{b['id']}").json()["status"]
                if status in TERMINAL and not floor:
                    break
                time.sleep(0.2)
            elapsed, ended = time.perf_counter() - started, time.time()
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            server_cpu = cpu_seconds(server.pid)
            parts = [q.get(timeout=args.cap) for _ in procs]
            seen = [(k, at - started_at, t) for part, _ in parts for k, at, t in part if at < ended]  # during the batch
            return elapsed, seen, {"server": server_cpu, "pollers": sum(c for _, c in parts)}
    finally:
        for p in [*procs, *hogs]:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        server.terminate()
        server.wait(10)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--pollers", type=int, default=50)
    ap.add_argument("--poll-procs", type=int, default=1)
    ap.add_argument(
        "--client",
        choices=("httpx", "lean"),
        default="lean",
        help="pollers write HTTP/1.1 by hand on kept-alive sockets (lean: ~0.1 ms of client CPU a poll), or use "
        "httpx (~3 ms: on a 2-core machine the pollers' own CPU becomes the load being measured)",
    )
    ap.add_argument("--every", type=float, default=0.1, help="seconds each poller waits between polls")
    ap.add_argument("--load", type=int, default=4, help="busy-looping processes during both runs")
    ap.add_argument("--latency", type=float, default=0.02, help="echo latency per request group")
    ap.add_argument("--cap", type=float, default=300, help="every run stops after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs and server logs")
    ap.add_argument("--profile", help="write py-spy's raw stacks of the polled server here (needs py-spy)")
    ap.add_argument("--src", help="run the server from DIR/coldbatch instead of the installed package")
    ap.add_argument("--plain-loop", action="store_true", help="hide uvloop and httptools from the server")
    ap.add_argument("--raw", help="write every poll here: kind, seconds since create, latency in ms")
    ap.add_argument(
        "--floor",
        type=float,
        default=0.0,
        help="also poll an idle server this many seconds under the same load (the OS's share)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cb-poll-"))
    try:
        alone, _, cpu_alone = run_once(args, work, 0, args.load)
        polled, seen, cpu = run_once(args, work, args.pollers, args.load)
        idle = run_once(args, work, args.pollers, args.load, args.floor)[1] if args.floor else []
    finally:
        if args.keep:
            print(f"(data dirs and server logs kept in {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"### poll latency: {args.rows:,} rows, {args.pollers} pollers every {args.every} s, {args.load} busy "
        f"processes, server code {args.src or 'installed'}{', plain loop' if args.plain_loop else ''} "
        f"(`python bench/poll_latency.py`)\n"
    )
    print(
        f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"load average at the end {os.getloadavg()[0]:.1f}\n"
    )
    print("| | polls | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|")
    for kind in ("retrieve", "list", "retrieve-first", "list-first"):
        v = [t for k, _, t in seen if k == kind]
        print(
            f"| {kind} | {len(v):,} | {pct(v, 0.5):.0f} ms | {pct(v, 0.9):.0f} ms | {pct(v, 0.99):.0f} ms | "
            f"{max(v) * 1000 if v else float('nan'):.0f} ms |"
        )
    change = (polled / alone - 1) * 100
    print(f"\n- batch time: {alone:.2f} s without pollers, {polled:.2f} s with them ({change:+.0f} %)")
    print(f"- mean poll {statistics.fmean(t for *_, t in seen) * 1000:.1f} ms" if seen else "- no polls")
    print(
        f"- CPU seconds: server {cpu_alone['server']:.1f} without pollers, {cpu['server']:.1f} with them; "
        f"the poller processes {cpu['pollers']:.1f}"
    )
    for kind in ("retrieve", "list") if idle else ():
        v = [t for k, _, t in idle if k == kind]
        print(
            f"- idle server, same pollers and load, {args.floor:g} s: {kind} p50 {pct(v, 0.5):.0f} ms, "
            f"p99 {pct(v, 0.99):.0f} ms ({len(v):,} polls)"
        )
    if args.raw:
        Path(args.raw).write_text("".join(f"{k}\t{at:.3f}\t{t * 1000:.1f}\n" for k, at, t in seen))


if __name__ == "__main__":
    main()
