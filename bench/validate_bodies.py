"""Benchmark: `coldbatch validate` with the request-schema checks (core/bodies.py) against the code before them,
on the same prepared shards, in one invocation.

The shards come from `coldbatch prepare` on the 2.4 M-row customer-feedback CSV (as bench/prepare_2m4.py; made
once under bench/data/validate-shards-ROWS/, which git ignores). The previous code is the tree of commit BASE,
extracted with `git archive` into a temporary folder and put first on PYTHONPATH; both run as subprocesses,
alternating, ROUNDS times each (this VM's speed drifts), and the medians are compared.
Usage: python bench/validate_bodies.py [ROWS] [BASE]   (defaults: 2,400,000 rows; BASE f20df6f^)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, feedback_csv

ROUNDS = 3


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of a child. On a machine loaded by other work the CPU time
    is the steadier figure; both are reported."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{err[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2_400_000
    base = sys.argv[2] if len(sys.argv) > 2 else "f20df6f^"
    shards = ROOT / "bench" / "data" / f"validate-shards-{rows}"  # (not bench/out: prepare_2m4.py empties it)
    if not (shards / "manifest.json").exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "coldbatch",
                "prepare",
                str(feedback_csv(rows)),
                "--out",
                str(shards),
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
                "--labels",
                "positive,negative,neutral",
            ],
            check=True,
            capture_output=True,
        )
    lines = sum(1 for p in shards.glob("*.jsonl") for _ in p.open("rb"))
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", base, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        envs = {
            "before": {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")},
            "after": {**os.environ, "PYTHONPATH": str(ROOT / "src")},
        }
        for name, env in envs.items():  # each run imports the tree it claims to
            where = subprocess.run(
                [sys.executable, "-c", "import coldbatch; print(coldbatch.__file__)"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert where.startswith(env["PYTHONPATH"]), (name, where)
        cmd = [sys.executable, "-m", "coldbatch", "validate", str(shards)]
        walls: dict[str, list[float]] = {"before": [], "after": []}
        cpus: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(ROUNDS):
            for name, env in envs.items():
                wall, cpu = timed(cmd, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
    before, after = statistics.median(walls["before"]), statistics.median(walls["after"])
    cpu_b, cpu_a = statistics.median(cpus["before"]), statistics.median(cpus["after"])
    fmt = " / ".join
    runs_text = {k: [f"{t:.2f}" for t in v] for k, v in walls.items()}
    per = {k: f"{statistics.median(v) / lines * 1e6:.2f} µs" for k, v in cpus.items()}
    print(f"""### validate with request-schema checks: {lines:,} lines (`python bench/validate_bodies.py {rows}`)

- machine: {os.cpu_count()} CPUs; date {time.strftime("%Y-%m-%d")}; load average at the end {os.getloadavg()[0]:.1f}
- shards: `coldbatch prepare` of `gen_feedback.py {rows}` with `--labels` (chat bodies with a JSON-schema
  response_format), {len(list(shards.glob("*.jsonl")))} files

| code | wall, median of {ROUNDS} (runs) | CPU (user+sys), median | CPU per line |
|---|---:|---:|---:|
| before ({base}: no body schema) | {before:.2f} s ({fmt(runs_text["before"])}) | {cpu_b:.2f} s | {per["before"]} |
| after (schema checks) | {after:.2f} s ({fmt(runs_text["after"])}) | {cpu_a:.2f} s | {per["after"]} |

- ratio after / before: wall **{after / before:.2f}×**, CPU **{cpu_a / cpu_b:.2f}×**
""")


if __name__ == "__main__":
    main()
