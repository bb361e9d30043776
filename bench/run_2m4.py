"""Benchmark: the 2.4 M-row customer-feedback job end to end against `coldbatch serve --engine echo`.

Starts the server (echo engine: a test fixture, not a model) and `coldbatch run` as subprocesses on
this machine, samples the job's ledger every 0.25 s to time each phase, and reports wall time per
phase plus the peak RSS of client (wait4) and server (VmHWM). Usage:
    python bench/run_2m4.py [ROWS]        (default 2,400,000; data generated once under bench/data/)
Prints a markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, feedback_csv, free_port, vm_hwm, vm_rss


def phase(ledger: Path) -> str:
    if not ledger.exists():
        return "starting"
    try:
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=1)
        job = db.execute("SELECT status FROM jobs").fetchone()
        states = dict(db.execute("SELECT state, COUNT(*) FROM units GROUP BY state").fetchall())
        db.close()
    except sqlite3.Error:
        return "starting"
    if job is None:
        return "starting"
    if job[0] != "running":
        return str(job[0])
    if states.get("planned") or states.get("uploading") or states.get("uploaded") or states.get("creating"):
        return "submitting"
    if states.get("created"):
        return "running batches"
    return "writing OUTPUT"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its reaped children (a helper process) so far (/proc/PID/stat), 0
    once it is gone: on a shared machine wall time per phase is noisy, CPU time per phase is what a change moves."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2_400_000
    data = feedback_csv(rows)
    work = ROOT / "bench" / "out" / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "serve",
            "--engine",
            "echo",
            "--port",
            str(port),
            "--data-dir",
            str(work / "server"),
        ],
        stderr=subprocess.DEVNULL,
    )
    env = {**os.environ, "COLDBATCH_HOME": str(work / "home")}
    env.pop("OPENAI_BASE_URL", None)
    try:
        time.sleep(2.0)
        cmd = [
            sys.executable,
            "-m",
            "coldbatch",
            "run",
            str(data),
            "--out",
            str(work / "output.parquet"),
            "--model",
            "gpt-4o-mini",
            "--system",
            "Categorize sentiment as positive, negative or neutral.",
            "--prompt",
            "{text}",
            "--labels",
            "negative,neutral,positive",
            "--max-tokens",
            "5",
            "--id-column",
            "id",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--api-key",
            "bench",
            "--yes",
            "--poll-interval",
            "1",
        ]
        t0 = time.perf_counter()
        with (work / "client.out").open("w") as fo, (work / "client.err").open("w") as fe:
            client = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, text=True)
            marks: dict[str, float] = {}
            peak: dict[str, int] = {}  # client's highest sampled RSS per phase
            cpu: dict[str, tuple[float, float]] = {}  # client, server CPU seconds when each phase began
            last = (0.0, 0.0)
            ledger = work / "home" / "ledger.sqlite3"
            while True:
                pid, status, usage = os.wait4(client.pid, os.WNOHANG)
                if pid:
                    break
                now = phase(ledger)
                marks.setdefault(now, time.perf_counter() - t0)
                last = (cpu_s(client.pid) or last[0], cpu_s(server.pid))
                cpu.setdefault(now, last)
                peak[now] = max(peak.get(now, 0), vm_rss(client.pid) or 0)
                time.sleep(0.25)
        total = time.perf_counter() - t0
        end_cpu = (usage.ru_utime + usage.ru_stime, cpu_s(server.pid))
        rc = os.waitstatus_to_exitcode(status)
        out, err = (work / "client.out").read_text(), (work / "client.err").read_text()
        server_rss = (vm_hwm(server.pid) or 0) / 2**20
    finally:
        server.terminate()
        server.wait(timeout=30)
    if rc != 0:
        sys.exit(f"run failed ({rc}):\n{err[-3000:]}")
    client_rss = usage.ru_maxrss / 1024
    order = ["starting", "preparing", "prepared", "submitting", "running batches", "writing OUTPUT", "done"]
    seen = [(p, marks[p]) for p in order if p in marks]
    phases = [(p, (seen[i + 1][1] if i + 1 < len(seen) else total) - t) for i, (p, t) in enumerate(seen)]
    ends = [cpu[p] for p, _ in seen[1:]] + [end_cpu]
    used = {p: (e[0] - cpu[p][0], e[1] - cpu[p][1]) for (p, _), e in zip(seen, ends, strict=True)}
    report = out.strip().splitlines()
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    print(
        f"""### run: {rows:,} rows end to end against `coldbatch serve --engine echo` \
(`python bench/run_2m4.py {rows}`)

- machine: {machine}; date {time.strftime("%Y-%m-%d")}
- echo is a test fixture (instant answers); this measures coldbatch's own overhead, client and server.

| phase (sampled from the ledger every 0.25 s) | wall time | client CPU | server CPU | client RSS (sampled peak) |
|---|---:|---:|---:|---:|
"""
        + "\n".join(
            f"| {p} | {d:.1f} s | {used[p][0]:.1f} s | {used[p][1]:.1f} s | {peak.get(p, 0) / 2**20:,.0f} MB |"
            for p, d in phases
        )
        + f"""
| **total** | **{total:.1f} s** (goal ≤ 300 s) | {end_cpu[0]:.1f} s | {end_cpu[1]:.1f} s | |

- load average at the end: {" ".join(f"{x:.2f}" for x in os.getloadavg())}
- peak RSS: client {client_rss:,.0f} MB (goal ≤ 500 MB), server {server_rss:,.0f} MB
- client report: {" / ".join(report)}
"""
    )


if __name__ == "__main__":
    main()
