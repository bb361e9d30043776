"""`coldbatch run --endpoint /v1/embeddings` on the embedded default (no provider, no --model): the real
all-MiniLM-L6-v2 embeds tweets through the Batch API path; OUTPUT holds the vectors (Parquet list<float>,
CSV JSON text), repeated texts are sent once (dedup) and a second run is answered from the cache."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("llama_cpp")

from coldbatch.engines import embedding

pytestmark = pytest.mark.skipif(
    embedding.default_embedding_source() is None, reason="the [local] extra's embedding model is not installed"
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline-tweets-200.csv"
EXTRA = [  # (tweet_id, text): two close in meaning, one unrelated, and repeats of earlier texts
    ("close-1", "My flight was cancelled and I missed my connection."),
    ("close-2", "The airline cancelled my flight, now I am stuck at the airport."),
    ("unrelated", "Mix two cups of flour with a pinch of salt."),
    ("again-1", "My flight was cancelled and I missed my connection."),
]


def _sample(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    with EXAMPLE.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:24]
    rows += [{**rows[0], "tweet_id": tid, "text": text} for tid, text in EXTRA]
    rows.append({**rows[3], "tweet_id": "again-2"})  # an example tweet, twice
    path = tmp_path / "tweets.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path, rows


def _run(tmp_path: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    env["COLDBATCH_HOME"] = str(tmp_path / "home")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "run",
            str(data),
            "--out",
            str(out),
            "--endpoint",
            "/v1/embeddings",
            "--input-column",
            "text",
            "--id-column",
            "tweet_id",
            "--poll-interval",
            "0.5",
            "--yes",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_embeddings_job_writes_vectors_with_dedup_and_cache(tmp_path: Path) -> None:
    data, rows = _sample(tmp_path)
    parquet = tmp_path / "vectors.parquet"
    first = _run(tmp_path, data, parquet, "--mode", "batch")
    assert f"distinct requests {len(rows) - 2}" in first.stdout and "sent 27" in first.stdout, first.stdout

    table = pq.read_table(parquet)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert "response" not in table.column_names
    got = table.to_pylist()
    assert [r["tweet_id"] for r in got] == [r["tweet_id"] for r in rows]
    assert all(r["error"] is None and r["prompt_tokens"] > 0 for r in got)
    vec = {r["tweet_id"]: np.array(r["embedding"], dtype=np.float64) for r in got}
    assert all(v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-4 for v in vec.values())
    assert np.array_equal(vec["close-1"], vec["again-1"])  # one request, its answer fanned out
    assert np.array_equal(vec[rows[3]["tweet_id"]], vec["again-2"])
    close = float(vec["close-1"] @ vec["close-2"])
    assert close > float(vec["close-1"] @ vec["unrelated"]) + 0.3

    csv_out = tmp_path / "vectors.csv"
    second = _run(tmp_path, data, csv_out)  # the same questions again: the cache answers, nothing is sent
    assert f"answered from the cache {len(rows) - 2}" in second.stdout and "sent 0" in second.stdout, second.stdout
    with csv_out.open(newline="", encoding="utf-8") as fh:
        again = list(csv.DictReader(fh))
    assert [r["tweet_id"] for r in again] == [r["tweet_id"] for r in rows]
    for r in again:
        assert np.allclose(json.loads(r["embedding"]), vec[r["tweet_id"]], atol=1e-7)
        assert r["attempts"] == "0"
