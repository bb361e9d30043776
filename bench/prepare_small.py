"""Benchmark: `coldbatch prepare` of a small input, the stdlib path against the columnar one (issue 11).

Both arms run this tree's `coldbatch prepare` as child processes, alternating; the columnar arm sets
`COLDBATCH_PREPARE_READER=columnar`. `--before DIR` adds a third arm: another tree's `src/` (e.g. a
`git archive` of an older commit) on `PYTHONPATH`. CPU (user+sys) and peak RSS come from wait4; medians
are printed with every run's CPU time. The two arms' output folders are compared byte for byte.

    python bench/prepare_small.py INPUT [--rounds 5] [--before /tmp/old] [--prompt "Sentiment of: {text}"]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT


def run(src: str, out: Path, prompt: str, env: dict[str, str]) -> tuple[float, float, float]:
    """(CPU user+sys s, wall s, peak RSS MB) of one `coldbatch prepare`."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "coldbatch", "prepare", src, "-o", str(out), "--model", "gpt-4o-mini"]
    t = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--prompt", prompt], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"prepare failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    return not (cmp.left_only or cmp.right_only) and all(
        filecmp.cmp(a / f, b / f, shallow=False) for f in cmp.common_files
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", help="another tree whose src/ is run as a third arm")
    ap.add_argument("--prompt", default="Sentiment of: {text}")
    a = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if k != "COLDBATCH_PREPARE_READER"}
    here = {**base, "PYTHONPATH": str(ROOT / "src")}
    arms = {"stdlib": here, "columnar": {**here, "COLDBATCH_PREPARE_READER": "columnar"}}
    if a.before:
        arms["before"] = {**base, "PYTHONPATH": str(Path(a.before) / "src")}
    tmp = Path(tempfile.mkdtemp(prefix="prepare-small-"))
    got: dict[str, list[tuple[float, float, float]]] = {k: [] for k in arms}
    for _ in range(a.rounds):
        for name, env in arms.items():
            got[name].append(run(a.input, tmp / name, a.prompt, env))
    print(f"`coldbatch prepare {a.input}`, {a.rounds} rounds alternating, load average {os.getloadavg()[0]:.1f}")
    for name, runs in got.items():
        cpu, wall, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        each = " / ".join(f"{r[0]:.2f}" for r in runs)
        print(f"- {name}: CPU {cpu:.2f} s ({each}), wall {wall:.2f} s, peak RSS {rss:.0f} MB")
    print(f"- stdlib and columnar output byte-identical: {same_tree(tmp / 'stdlib', tmp / 'columnar')}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
