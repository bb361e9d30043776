"""Benchmark: `coldbatch prepare` vs the naive baseline on the 2.4 M-row customer-feedback CSV.

Both run in this one invocation, on the same file, as subprocesses; peak RSS is each child's
ru_maxrss (from wait4). Also checks that both produce the same requests (parsed JSON equality on a
sample of lines from every shard), the shard count and limits, and times `coldbatch validate` on all
shards. Usage: python bench/prepare_2m4.py [ROWS]  (default 2,400,000; data is generated once under
bench/data/, which git ignores). Prints a markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from _common import ROOT, SHARED, feedback_csv

ROUNDS = 3


#: the allocator settings `coldbatch/_alloc.py` had before issue 11 (mimalloc purging every freed page at
#: once, OpenBLAS with a thread per core): run as a third command, alternating, to measure what they cost
BEFORE_ISSUE_11 = {"MIMALLOC_PURGE_DELAY": "0", "OPENBLAS_NUM_THREADS": str(os.cpu_count() or 1)}


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str, float, float]:
    """(seconds, peak RSS in MB, stdout, user s, system s) of a child process. Dirty pages of the previous
    run are flushed first (`sync`), so no run pays for another's writeback."""
    os.sync()
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env} if env else None
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[:3]} failed:\n{err}")
    return elapsed, usage.ru_maxrss / 1024, out, usage.ru_utime, usage.ru_stime


def _times(runs: list[tuple[float, float, str, float, float]]) -> str:
    return " / ".join(f"{r[0]:.2f}" for r in runs)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2_400_000
    data = feedback_csv(rows)
    out = ROOT / "bench" / "out"
    shutil.rmtree(out, ignore_errors=True)
    naive_dir, cb_dir = out / "naive", out / "coldbatch"
    naive_cmd = [sys.executable, str(SHARED / "bench" / "naive_prepare.py"), str(data), str(naive_dir)]
    cb_cmd = [
        sys.executable,
        "-m",
        "coldbatch",
        "prepare",
        str(data),
        "--out",
        str(cb_dir),
        "--model",
        "gpt-4o-mini",
        "--system",
        "Categorize sentiment as positive, negative or neutral.",
        "--prompt",
        "{text}",
        "--id-column",
        "id",
        "--max-tokens",
        "5",
        "--json",
    ]
    # Both tools ROUNDS times, alternating (this VM's speed drifts by ±20 % over minutes); the medians are
    # compared. Each run replaces the previous run's output folder, as a user re-running would.
    naive_runs, cb_runs, before_runs = [], [], []
    for _ in range(ROUNDS):
        shutil.rmtree(naive_dir, ignore_errors=True)
        naive_runs.append(run(naive_cmd))
        shutil.rmtree(cb_dir, ignore_errors=True)
        cb_runs.append(run(cb_cmd))
        shutil.rmtree(cb_dir, ignore_errors=True)
        before_runs.append(run(cb_cmd, BEFORE_ISSUE_11))
        print(
            f"naive {naive_runs[-1][0]:.2f} s, coldbatch {cb_runs[-1][0]:.2f} s, before {before_runs[-1][0]:.2f} s",
            file=sys.stderr,
        )  # progress, and the figures if a later step fails
        shutil.rmtree(cb_dir, ignore_errors=True)
    cb_runs.append(run(cb_cmd))  # the last one's output is checked below
    naive_t, naive_rss = statistics.median(r[0] for r in naive_runs), max(r[1] for r in naive_runs)
    cb_t, cb_rss = statistics.median(r[0] for r in cb_runs[:ROUNDS]), max(r[1] for r in cb_runs)
    bf_t, bf_rss = statistics.median(r[0] for r in before_runs), max(r[1] for r in before_runs)
    cpu = {
        name: (statistics.median(r[3] for r in rs), statistics.median(r[4] for r in rs))
        for name, rs in (("naive", naive_runs), ("cb", cb_runs[:ROUNDS]), ("before", before_runs))
    }
    cb_out = cb_runs[-1][2]
    manifest = json.loads(cb_out)
    val_t, val_rss, *_ = run([sys.executable, "-m", "coldbatch", "validate", str(cb_dir)])
    shards = manifest["shards"]
    naive_files = sorted(naive_dir.glob("*.jsonl"))
    same = len(naive_files) == len(shards)
    for nf, s in zip(naive_files, shards, strict=False):
        with nf.open() as a, (cb_dir / s["path"]).open() as b:
            for k, (la, lb) in enumerate(zip(a, b, strict=True)):
                if k % 997 == 0:
                    same &= json.loads(la) == json.loads(lb)
    biggest = max(s["requests"] for s in shards)
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    print(f"""### prepare: {rows:,} rows (`python bench/prepare_2m4.py {rows}`)

- machine: {machine}; date {time.strftime("%Y-%m-%d")}
- input: `gen_feedback.py {rows}` ({data.stat().st_size / 1e6:,.0f} MB)

| | wall time | peak RSS |
|---|---:|---:|
| naive_prepare.py (baseline), median of {ROUNDS} | {naive_t:.2f} s ({_times(naive_runs)}) | {naive_rss:,.0f} MB |
| coldbatch prepare, median of {ROUNDS} | {cb_t:.2f} s ({_times(cb_runs[:ROUNDS])}) | {cb_rss:,.0f} MB |
| coldbatch prepare with the allocator settings before issue 11, median of {ROUNDS} | {bf_t:.2f} s \
({_times(before_runs)}) | {bf_rss:,.0f} MB |
| coldbatch validate (all shards) | {val_t:.2f} s | {val_rss:,.0f} MB |

- speed-up: **{naive_t / cb_t:.1f}×** (goal ≥ 10×); coldbatch peak RSS {cb_rss:,.0f} MB (goal ≤ 300 MB); \
before issue 11's settings {naive_t / bf_t:.1f}×
- CPU, median user / system s: naive {cpu["naive"][0]:.2f} / {cpu["naive"][1]:.2f}; coldbatch \
{cpu["cb"][0]:.2f} / {cpu["cb"][1]:.2f}; before {cpu["before"][0]:.2f} / {cpu["before"][1]:.2f}; load average \
{os.getloadavg()[0]:.1f} at the end
- shards: {len(shards)} (largest {biggest:,} requests; goal 48 of ≤ 50,000); same requests as the baseline \
(JSON-equal on sampled lines of every shard): {"yes" if same else "NO"}
""")


if __name__ == "__main__":
    main()
