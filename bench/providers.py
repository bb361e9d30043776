"""Benchmark: the 14,640-tweet job through `--provider openai` and `--provider anthropic` against one
`coldbatch serve --engine echo`, alternating, each run in a fresh COLDBATCH_HOME (no cache).

Reported per run: the CLI's wall time (process start to exit) and the job's own seconds (the report's last
figure: prepare to OUTPUT). The difference between the providers is the client's translation, the inline
create call, the results stream and the server's Anthropic dialect; the echo fixture answers instantly.

    python bench/providers.py [--reps 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "acceptance"))
from _runner_support import TWEETS, coldbatch, echo_server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cb-providers-"))
    got: dict[str, list[tuple[float, float]]] = {}
    try:
        with echo_server(tmp / "srv") as srv:
            for rep in range(args.reps):
                for provider, url in (("openai", srv.base_url), ("anthropic", srv.base_url.removesuffix("/v1"))):
                    t = time.monotonic()
                    r = coldbatch(
                        tmp / f"home-{provider}-{rep}",
                        "run",
                        TWEETS,
                        "--out",
                        tmp / f"{provider}-{rep}.csv",
                        "--provider",
                        provider,
                        "-m",
                        "gpt-4o-mini",
                        "-p",
                        "Sentiment of this tweet: {text}",
                        "--labels",
                        "negative,neutral,positive",
                        "--id-column",
                        "tweet_id",
                        "--on-duplicate-id",
                        "suffix",
                        "--max-requests",
                        "5000",
                        "--base-url",
                        url,
                        "--api-key",
                        "sk-test",
                        "--yes",
                        "--poll-interval",
                        "0.2",
                        "--mode",
                        "batch",
                        timeout=900,
                    )
                    wall = time.monotonic() - t
                    m = re.search(r"; ([\d.]+) s", r.stdout)
                    assert r.returncode == 0 and m, r.stderr[-2000:]
                    got.setdefault(provider, []).append((wall, float(m.group(1))))
                    print(f"{provider} rep {rep}: wall {wall:.1f} s, job {m.group(1)} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mean = {p: sum(j for _, j in v) / len(v) for p, v in got.items()}
    print("| provider | job seconds (each run) | mean | × openai |\n|---|---|---:|---:|")
    for p, v in got.items():
        print(f"| {p} | {', '.join(f'{j:.1f}' for _, j in v)} | {mean[p]:.1f} | {mean[p] / mean['openai']:.2f}× |")


if __name__ == "__main__":
    main()
