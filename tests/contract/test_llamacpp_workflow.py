"""The canonical Batch API workflow, unchanged, against the real local model: upload, create, poll,
download. With a label schema every answer is one of the labels (grammar-constrained decoding)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from coldbatch.engines.pool import open_engine

TWEETS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "airline-tweets" / "Tweets.csv"
LABELS = ["negative", "neutral", "positive"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}


def test_sdk_workflow_on_20_tweets_answers_labels(serve) -> None:  # type: ignore[no-untyped-def]
    with TWEETS.open(newline="", encoding="utf-8") as fh:
        rows = [r for _, r in zip(range(20), csv.DictReader(fh), strict=False)]
    buf = io.StringIO()
    for r in rows:
        body = {
            "model": "SmolLM2-135M-Instruct",
            "temperature": 0,
            "max_tokens": 32,
            "messages": [
                {"role": "system", "content": "Label the tweet's sentiment."},
                {"role": "user", "content": r["text"]},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "label", "strict": True, "schema": SCHEMA},
            },
        }
        buf.write(
            json.dumps({"custom_id": r["tweet_id"], "method": "POST", "url": "/v1/chat/completions", "body": body})
            + "\n"
        )
    client = serve(open_engine("llama-cpp")).client()  # in worker processes, as `coldbatch serve` runs it
    f = client.files.create(file=("tweets.jsonl", buf.getvalue().encode()), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == 20
    assert batch.error_file_id is None and batch.output_file_id
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(r["tweet_id"] for r in rows)
    for o in out:
        body = o["response"]["body"]
        assert json.loads(body["choices"][0]["message"]["content"])["label"] in LABELS
        assert body["usage"]["prompt_tokens"] > 0 and body["model"] == "SmolLM2-135M-Instruct"
