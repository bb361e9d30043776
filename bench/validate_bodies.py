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


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


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
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(ROUNDS):
            for name, env in envs.items():
                runs[name].append(timed(cmd, env))
    before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
    fmt = " / ".join
    runs_text = {k: [f"{t:.2f}" for t in v] for k, v in runs.items()}
    print(f"""### validate with request-schema checks: {lines:,} lines (`python bench/validate_bodies.py {rows}`)

- machine: {os.cpu_count()} CPUs; date {time.strftime("%Y-%m-%d")}; load average at the end {os.getloadavg()[0]:.1f}
- shards: `coldbatch prepare` of `gen_feedback.py {rows}` with `--labels` (chat bodies with a JSON-schema
  response_format), {len(list(shards.glob("*.jsonl")))} files

| code | median of {ROUNDS} (runs) | per line |
|---|---:|---:|
| before ({base}: no body schema) | {before:.2f} s ({fmt(runs_text["before"])}) | {before / lines * 1e6:.2f} µs |
| after (schema checks) | {after:.2f} s ({fmt(runs_text["after"])}) | {after / lines * 1e6:.2f} µs |

- ratio after / before: **{after / before:.2f}×**
""")


if __name__ == "__main__":
    main()
