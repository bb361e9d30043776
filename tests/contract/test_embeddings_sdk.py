"""`/v1/embeddings` on the real local model, through the unmodified openai SDK: the sync endpoint (floats,
and base64, which the SDK asks for by default) and the Batch API. The engine runs in a worker process,
as `coldbatch serve` runs it."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import openai
import pytest

pytest.importorskip("llama_cpp")

from coldbatch.engines import embedding
from coldbatch.engines.pool import open_engine

pytestmark = pytest.mark.skipif(
    embedding.default_embedding_source() is None, reason="the [local] extra's embedding model is not installed"
)

MODEL = "all-MiniLM-L6-v2"
CANCELLED = "My flight was cancelled and I missed my connection."
CLOSE = "The airline cancelled my flight, now I am stuck at the airport."
UNRELATED = "Mix two cups of flour with a pinch of salt."


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def client(serve):  # type: ignore[no-untyped-def]
    return serve(open_engine("llama-cpp", workers=1)).client()


def test_sdk_embeddings_float_and_default_base64_agree(client: openai.OpenAI) -> None:
    texts = [CANCELLED, CLOSE, UNRELATED]
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    default = client.embeddings.create(model=MODEL, input=texts)  # the SDK sends base64 and decodes it
    assert floats.object == "list" and floats.model == MODEL
    assert [d.index for d in floats.data] == [0, 1, 2] and all(d.object == "embedding" for d in floats.data)
    a = np.array([d.embedding for d in floats.data])
    b = np.array([d.embedding for d in default.data])
    assert a.shape == b.shape == (3, 384)
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 3
    assert cos(a[0], a[1]) > cos(a[0], a[2]) + 0.3  # the two cancellations are far closer than the recipe
    from coldbatch.estimate.tokens import counter

    ids = [counter("cl100k_base").encoding.encode(t) for t in texts]  # what LangChain sends by default
    as_ids = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert np.allclose(np.array([d.embedding for d in as_ids.data]), a, atol=1e-3)


def test_sdk_bad_embeddings_requests_are_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=MODEL, input="hi", dimensions=64)
    with pytest.raises(openai.BadRequestError, match="at most 512"):
        client.embeddings.create(model=MODEL, input="word " * 600)
    assert len(client.embeddings.create(model=MODEL, input="still fine").data[0].embedding) == 384


def test_batch_of_embeddings_lines(client: openai.OpenAI) -> None:
    texts = [f"tweet {i}: the flight to Boston was delayed by {i} hours" for i in range(40)]
    texts += [CANCELLED, CLOSE, UNRELATED, CANCELLED]
    buf = io.StringIO()
    for i, text in enumerate(texts):
        buf.write(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": MODEL, "input": text},
                }
            )
            + "\n"
        )
    f = client.files.create(file=("embed.jsonl", buf.getvalue().encode()), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.completed == len(texts)
    assert batch.error_file_id is None and batch.output_file_id
    lines = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in lines) == sorted(f"r{i}" for i in range(len(texts)))
    vec = {}
    for o in lines:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and body["model"] == MODEL and body["usage"]["prompt_tokens"] > 0
        vec[o["custom_id"]] = np.array(body["data"][0]["embedding"])
    assert all(v.shape == (384,) for v in vec.values())
    first, close, unrelated, again = (vec[f"r{i}"] for i in range(40, 44))
    assert np.abs(first - again).max() < 1e-3  # same text: same vector, up to how its encode call was packed
    assert cos(first, close) > cos(first, unrelated) + 0.3
