"""The official anthropic SDK's Message Batches workflow, unchanged (only base_url and key), against the real
local model: create with inline requests → poll retrieve → iterate results, on 20 tweets. With a label schema
(`output_config.format`) every answer is one of the labels (grammar-constrained decoding on the chat engine)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

import anthropic
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages.batch_create_params import Request

from coldbatch.engines.pool import open_engine

TWEETS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "airline-tweets" / "Tweets.csv"
LABELS = ["negative", "neutral", "positive"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}


def test_anthropic_batch_workflow_on_20_tweets_answers_labels(serve) -> None:  # type: ignore[no-untyped-def]
    with TWEETS.open(newline="", encoding="utf-8") as fh:
        rows = [r for _, r in zip(range(20), csv.DictReader(fh), strict=False)]
    srv = serve(open_engine("llama-cpp"))  # in worker processes, as `coldbatch serve` runs it
    client = anthropic.Anthropic(base_url=srv.root, api_key="sk-test")
    srv._closers.append(client.close)
    requests = []
    for r in rows:
        params: MessageCreateParamsNonStreaming = {
            "model": "SmolLM2-135M-Instruct",
            "max_tokens": 32,
            "system": "Label the tweet's sentiment.",
            "messages": [{"role": "user", "content": r["text"]}],
            "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
        }
        requests.append(Request(custom_id=f"tweet-{r['tweet_id']}", params=params))
    batch = client.messages.batches.create(requests=requests)
    deadline = time.monotonic() + 240
    while batch.processing_status != "ended" and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.messages.batches.retrieve(batch.id)
    assert batch.processing_status == "ended", batch
    assert batch.request_counts.succeeded == 20 and batch.request_counts.errored == 0
    results = list(client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == sorted(f"tweet-{r['tweet_id']}" for r in rows)
    for r in results:
        assert r.result.type == "succeeded"
        message = r.result.message
        assert json.loads(message.content[0].text)["label"] in LABELS  # type: ignore[union-attr]
        assert message.usage.input_tokens > 0 and message.model == "SmolLM2-135M-Instruct"
