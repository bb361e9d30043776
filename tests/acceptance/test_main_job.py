"""The README's main job, shrunk to 20 rows: `coldbatch run` with no provider configured uses the
embedded server with the real local model (llama.cpp), and every row gets one of the labels."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline-tweets-200.csv"
LABELS = ("negative", "neutral", "positive")


def test_embedded_default_labels_every_row(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    with EXAMPLE.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:20]
    with sample.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    env["COLDBATCH_HOME"] = str(tmp_path / "home")
    out = tmp_path / "labelled.csv"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "run",
            str(sample),
            "--out",
            str(out),
            "--model",
            "SmolLM2-135M-Instruct",
            "--prompt",
            "Tweet: {text}",
            "--labels",
            ",".join(LABELS),
            "--max-tokens",
            "32",
            "--temperature",
            "0",
            "--id-column",
            "tweet_id",
            "--poll-interval",
            "0.5",
            "--mode",
            "batch",
            "--yes",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    with out.open(newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert [r["tweet_id"] for r in got] == [r["tweet_id"] for r in rows]
    assert all(r["label"] in LABELS for r in got), [r["response"] for r in got if r["label"] not in LABELS]
    assert all(r["error"] == "" and int(r["completion_tokens"]) > 0 for r in got)
