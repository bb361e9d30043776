"""Benchmark (a): one 50,000-request batch through `coldbatch serve --engine echo`.

Measures what a client sees end to end on loopback, with the real openai SDK:

- upload time of the input file (POST /v1/files),
- time from `batches.create` to `completed` (validate + execute + write the result files), and req/s,
- the time spent in each status (seen by polling every `--poll` seconds, so ± one poll interval),
- the server's peak RSS: VmHWM from /proc/<pid>/status just before the server is stopped (exact), and
  the maximum of psutil samples taken every 50 ms (a cross-check),
- the download time of the output file (GET /v1/files/{id}/content).

The input is built like a real job: `gen_feedback.py` rows → `coldbatch prepare` (chat requests,
gpt-4o-mini, `--max-tokens 5`), unless `--input` names a ready batch file. Every run uses a fresh data
dir and a fresh server process. Prints one markdown block per run, with the goal and PASS/FAIL.

    python bench/server_echo.py                  # 50,000 requests, one run
    python bench/server_echo.py --runs 2         # two runs, one server each
    python bench/server_echo.py --input shard.jsonl --keep
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _common import GEN_FEEDBACK, free_port, start_echo_server, vm_hwm
from openai import OpenAI

GOAL_RPS = 20_000
GOAL_RSS_BYTES = 1 << 30
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Figures:
    requests: int = 0
    input_bytes: int = 0
    upload_s: float = 0.0
    run_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    status: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    download_s: float = 0.0
    output_bytes: int = 0
    output_lines: int = 0
    hwm_bytes: int | None = None
    sampled_peak_bytes: int = 0
    load: float = 0.0  #: 1-minute load average just before the run (other work on the machine)
    cpu_s: float = 0.0  #: server user+sys CPU seconds from create to completed (robust to a busy machine)

    @property
    def rps(self) -> float:
        return self.requests / self.run_s if self.run_s else 0.0


def build_input(n: int, workdir: Path) -> Path:
    """gen_feedback.py → CSV → `coldbatch prepare` → one shard of n chat requests."""
    csv_path, out = workdir / "feedback.csv", workdir / "prepared"
    subprocess.run([sys.executable, str(GEN_FEEDBACK), str(n), str(csv_path)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "prepare",
            str(csv_path),
            "-o",
            str(out),
            "--model",
            "gpt-4o-mini",
            "--prompt",
            "{text}",
            "--id-column",
            "id",
            "--max-tokens",
            "5",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shards = sorted(out.glob("*.jsonl"))
    if len(shards) != 1:
        raise SystemExit(f"expected one shard in {out}, got {len(shards)}")
    return shards[0]


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@contextlib.contextmanager
def server(data_dir: Path, port: int, latency: float, log: Path):  # type: ignore[no-untyped-def]
    proc = start_echo_server(data_dir, port, latency, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_once(input_path: Path, workdir: Path, *, latency: float, poll: float) -> Figures:
    fig = Figures(input_bytes=input_path.stat().st_size, load=os.getloadavg()[0])
    with input_path.open("rb") as fh:
        fig.requests = sum(1 for line in fh if line.strip())
    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    with server(data_dir, port, latency, workdir / "server.log") as proc:
        sampler = RssSampler(proc.pid)
        sampler.start()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600)
        t = time.perf_counter()
        with input_path.open("rb") as fh:
            up = client.files.create(file=(input_path.name, fh), purpose="batch")
        fig.upload_s = time.perf_counter() - t

        ps = psutil.Process(proc.pid)
        cpu0 = sum(ps.cpu_times()[:2])
        t0 = time.perf_counter()
        batch = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
        status, since = batch.status, t0
        while batch.status not in TERMINAL:
            time.sleep(poll)
            batch = client.batches.retrieve(batch.id)
            now = time.perf_counter()
            if batch.status != status:
                fig.phases[status] = fig.phases.get(status, 0.0) + (now - since)
                status, since = batch.status, now
            if now - t0 > 600:
                raise SystemExit(f"batch still {batch.status} after 600 s")
        fig.run_s = time.perf_counter() - t0
        fig.cpu_s = sum(ps.cpu_times()[:2]) - cpu0
        fig.status = batch.status
        rc = batch.request_counts
        fig.counts = {"total": rc.total, "completed": rc.completed, "failed": rc.failed} if rc else {}

        if batch.output_file_id:
            t = time.perf_counter()
            content = client.files.content(batch.output_file_id).read()
            fig.download_s = time.perf_counter() - t
            fig.output_bytes, fig.output_lines = len(content), content.count(b"\n")
        fig.hwm_bytes = vm_hwm(proc.pid)
        sampler.stop()
        fig.sampled_peak_bytes = sampler.peak
    return fig


def markdown(fig: Figures, argv: list[str], latency: float) -> str:
    mib = 1 << 20
    peak = fig.hwm_bytes if fig.hwm_bytes is not None else fig.sampled_peak_bytes
    ok_rps, ok_rss = fig.rps >= GOAL_RPS, peak <= GOAL_RSS_BYTES
    ok_all = fig.status == "completed" and fig.output_lines == fig.requests == fig.counts.get("completed")
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in fig.phases.items())
    verdict = "PASS" if ok_rps and ok_rss and ok_all else "FAIL"
    return "\n".join(
        [
            "```",
            f"command:   python {' '.join(argv)}",
            f"machine:   nproc={os.cpu_count()}, {platform.machine()}, {platform.platform()}",
            f"python:    {platform.python_version()}",
            f"date:      {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
            f"engine:    echo (test fixture), latency {latency} s",
            f"input:     {fig.requests:,} requests, {fig.input_bytes / mib:.1f} MiB",
            f"upload:    {fig.upload_s:.2f} s ({fig.input_bytes / mib / fig.upload_s:.0f} MiB/s)",
            f"batch:     create → {fig.status} in {fig.run_s:.2f} s = {fig.rps:,.0f} req/s "
            f"(validate+execute+write; phases as polled: {phases})",
            f"server:    {fig.cpu_s:.2f} CPU s (user+sys) from create to {fig.status}; "
            f"load average before the run {fig.load:.2f}",
            f"counts:    {fig.counts}; output file {fig.output_lines:,} lines, {fig.output_bytes / mib:.1f} MiB",
            f"download:  {fig.download_s:.2f} s",
            f"peak RSS:  {peak / mib:.0f} MiB (VmHWM), psutil 50 ms samples max {fig.sampled_peak_bytes / mib:.0f} MiB",
            f"goal:      ≥ {GOAL_RPS:,} req/s and ≤ {GOAL_RSS_BYTES // mib} MiB peak RSS, all requests completed",
            f"result:    {verdict} (req/s {'ok' if ok_rps else 'LOW'}, RSS {'ok' if ok_rss else 'HIGH'}, "
            f"results {'ok' if ok_all else 'WRONG'})",
            "```",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50_000, help="requests to generate (ignored with --input)")
    ap.add_argument("--input", type=Path, help="a ready batch input file (JSONL) instead of generating one")
    ap.add_argument("--runs", type=int, default=1, help="runs, each with a fresh server and data dir")
    ap.add_argument("--echo-latency", type=float, default=0.0)
    ap.add_argument("--poll", type=float, default=0.05, help="seconds between batch polls")
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="do not delete the temporary folder")
    a = ap.parse_args()
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="coldbatch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    passed = True
    try:
        input_path = a.input or build_input(a.requests, workdir)
        for _ in range(a.runs):
            fig = run_once(input_path, workdir, latency=a.echo_latency, poll=a.poll)
            block = markdown(fig, sys.argv, a.echo_latency)
            passed &= "result:    PASS" in block
            print(block, flush=True)
    finally:
        if a.workdir is None and not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif a.keep:
            print(f"kept {workdir}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
