"""Benchmark: how heavy the client is — `coldbatch --version`, and `coldbatch run` on 1,000 tweets against a
local `coldbatch serve --engine echo`, side by side with the plain openai SDK doing the same job
(bench/_sdk_batch_job.py: upload, create, poll, download, join, write CSV), in one invocation.

Every command runs as a child process; wall time from spawn to exit, peak RSS from wait4 (ru_maxrss). The
two jobs alternate ROUNDS times against one server and poll at the same interval; medians are compared.
`coldbatch run` uses `--mode batch` (auto would send 1,000 requests sync), a fresh COLDBATCH_HOME each run
(no cached answers) and `--no-dedup` (the SDK script sends every row too).

Both sides start from compiled bytecode, as installed packages do (pip compiles a wheel's modules; the openai
SDK's are): coldbatch's modules are compiled first (`compileall`), because an editable checkout under
PYTHONDONTWRITEBYTECODE=1 (set on our VMs) would otherwise compile ~90 modules from source in every run.

    python bench/client_weight.py [--rounds 5] [--poll 0.5]

Prints a markdown block for docs/benchmarks.md. Goals (issue 11): start <= 0.3 s and <= 150 MB; run
<= 150 MB and <= 1.2x the SDK's wall time.
"""

from __future__ import annotations

import argparse
import compileall
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, free_port
from server_echo import server

import coldbatch

TWEETS = SHARED / "data" / "airline-tweets" / "Tweets.csv"


def child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(seconds, peak RSS in MB, CPU seconds user+sys) of one child process; exits the benchmark when it fails.
    CPU time is the steadier figure on a loaded machine, where wall time is mostly waiting for a core.

    The command runs under GNU time, which forks it from its own small process: Linux carries a process's
    peak RSS across exec, so a child spawned straight from this (openai-importing, ~60 MB) process would
    report at least this process's RSS."""
    with tempfile.NamedTemporaryFile("r") as rep:
        t = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rep.name, *cmd], capture_output=True, env=env)
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr.decode(errors='replace')[-3000:]}")
        rss, user, system = rep.read().split()[-3:]
        return elapsed, int(rss) / 1024, float(user) + float(system)


def first_rows(n: int, dst: Path) -> Path:
    with TWEETS.open(newline="", encoding="utf-8") as fh, dst.open("w", newline="", encoding="utf-8") as out:
        reader, writer = csv.reader(fh), csv.writer(out)
        writer.writerow(next(reader))
        for _, row in zip(range(n), reader, strict=False):
            writer.writerow(row)
    return dst


def coldbatch_cmd(data: Path, out: Path, base_url: str, poll: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "coldbatch",
        "run",
        str(data),
        "--out",
        str(out),
        "--model",
        "gpt-4o-mini",
        "--prompt",
        "Tweet: {text}",
        "--max-tokens",
        "10",
        "--base-url",
        base_url,
        "--api-key",
        "bench",
        "--mode",
        "batch",
        "--no-dedup",
        "--yes",
        "--poll-interval",
        str(poll),
    ]


def _med(xs: list[tuple[float, float, float]]) -> tuple[float, float]:
    return statistics.median(x[0] for x in xs), max(x[1] for x in xs)


def _walls(xs: list[tuple[float, float, float]]) -> str:
    return " / ".join(f"{x[0]:.2f}" for x in xs)


def _cpu(xs: list[tuple[float, float, float]]) -> float:
    return statistics.median(x[2] for x in xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between status checks, both clients")
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cb-client-weight-"))
    compileall.compile_dir(Path(coldbatch.__file__).parent, quiet=1)  # as an installed package has them
    data = first_rows(args.rows, work / "tweets.csv")
    bare, version = [], []
    for _ in range(args.rounds):  # the interpreter's own start, the baseline on a loaded machine
        bare.append(child([sys.executable, "-c", "pass"]))
        version.append(child([sys.executable, "-m", "coldbatch", "--version"]))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cb, sdk = [], []
    with server(work / "data", port, 0.0, work / "server.log"):
        for r in range(args.rounds):
            env = {**os.environ, "COLDBATCH_HOME": str(work / f"home-{r}")}
            sdk.append(
                child(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "_sdk_batch_job.py"),
                        str(data),
                        str(work / f"sdk-{r}.csv"),
                        base_url,
                        "gpt-4o-mini",
                        str(args.poll),
                    ]
                )
            )
            cb.append(child(coldbatch_cmd(data, work / f"cb-{r}.csv", base_url, args.poll), env))
    (v_t, v_rss), (cb_t, cb_rss), (sdk_t, sdk_rss), (b_t, b_rss) = _med(version), _med(cb), _med(sdk), _med(bare)
    same = _rows(work / f"cb-{args.rounds - 1}.csv") == _rows(work / f"sdk-{args.rounds - 1}.csv") == args.rows
    print(f"""### client weight: {args.rows:,} tweets (`python bench/client_weight.py --rounds {args.rounds}`)

- machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; date {time.strftime("%Y-%m-%d")}; \
server `coldbatch serve --engine echo` on loopback; both clients poll every {args.poll} s

| | wall time (median of {args.rounds}) | CPU user+sys (median) | peak RSS (max) |
|---|---:|---:|---:|
| `python -c pass` (the interpreter alone) | {b_t:.2f} s ({_walls(bare)}) | {_cpu(bare):.2f} s | {b_rss:,.0f} MB |
| `coldbatch --version` | {v_t:.2f} s ({_walls(version)}) | {_cpu(version):.2f} s | {v_rss:,.0f} MB |
| plain openai SDK script (baseline) | {sdk_t:.2f} s ({_walls(sdk)}) | {_cpu(sdk):.2f} s | {sdk_rss:,.0f} MB |
| `coldbatch run --mode batch` | {cb_t:.2f} s ({_walls(cb)}) | {_cpu(cb):.2f} s | {cb_rss:,.0f} MB |

- run / SDK: **{cb_t / sdk_t:.2f}×** wall, {_cpu(cb) / _cpu(sdk):.2f}× CPU (goal ≤ 1.2×); median of the \
{args.rounds} rounds' own ratios (each round runs the two back to back, so a machine that speeds up or slows down \
between rounds moves both): {_pair_ratio(cb, sdk, 0):.2f}× wall, {_pair_ratio(cb, sdk, 2):.2f}× CPU; \
run peak RSS {cb_rss:,.0f} MB (goal ≤ 150 MB); start {v_t:.2f} s, {v_rss:,.0f} MB (goal ≤ 0.3 s, ≤ 150 MB)
- both OUTPUTs hold {args.rows:,} rows: {"yes" if same else "NO"}
""")


def _pair_ratio(a: list[tuple[float, float, float]], b: list[tuple[float, float, float]], field: int) -> float:
    return statistics.median(x[field] / y[field] for x, y in zip(a, b, strict=True))


def _rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


if __name__ == "__main__":
    main()
