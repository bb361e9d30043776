"""OpenAI's Responses API through the official `openai` SDK: `client.responses.create` and a Batch API file whose
lines have url `/v1/responses`, against `coldbatch serve` (echo fixture), translated to the engine's chat."""

from __future__ import annotations

import io
import json
import time
import zlib

import openai
import pytest
from openai.types.responses import Response

from .conftest import Server

LABELS = ["negative", "neutral", "positive"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}
FORMAT = {"format": {"type": "json_schema", "name": "label", "schema": SCHEMA, "strict": True}}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """On SQLite + folder and on PostgreSQL + S3 (tests/_scaleout_infra.py), like the rest of the OpenAI surface."""
    return str(request.param)


def test_responses_create(client: openai.OpenAI) -> None:
    resp = client.responses.create(model="gpt-echo", instructions="Be brief.", input="Tell me a story")
    assert resp.object == "response" and resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.output_text == "Tell me a story"  # the SDK's own join of the output_text parts
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    Response.model_validate(resp.model_dump())  # every field the SDK's type requires, with its type
    labelled = client.responses.create(model="gpt-echo", input=[{"role": "user", "content": "a tweet"}], text=FORMAT)
    assert json.loads(labelled.output_text)["label"] == LABELS[zlib.crc32(b"a tweet") % 3]
    cut = client.responses.create(model="gpt-echo", input="one two three four five " * 10, max_output_tokens=16)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens" and cut.usage.output_tokens == 16  # type: ignore[union-attr]


def test_responses_errors_name_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="gpt-echo", input=[{"role": "robot", "content": "x"}])  # type: ignore[list-item]
    assert "input[0].role" in err.value.message and "robot" in err.value.message
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="gpt-echo", input="x", previous_response_id="resp_123")
    with pytest.raises(openai.BadRequestError, match="max_output_tokens"):
        client.responses.create(model="gpt-echo", input="x", max_output_tokens=3)


def test_batch_of_responses_lines(server: Server) -> None:
    client = server.client()
    buf = io.StringIO()
    for i, text in enumerate(["first tweet", "second tweet", "third tweet"]):
        body = {"model": "gpt-echo", "input": text, "instructions": "Label the tweet.", "text": FORMAT}
        buf.write(json.dumps({"custom_id": f"t{i}", "method": "POST", "url": "/v1/responses", "body": body}) + "\n")
    bad = {"model": "gpt-echo", "input": "x", "temperature": 7}
    buf.write(json.dumps({"custom_id": "bad", "method": "POST", "url": "/v1/responses", "body": bad}) + "\n")
    f = client.files.create(file=("responses.jsonl", buf.getvalue().encode()), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    # a body the provider would refuse fails the whole file at validation, with its line and field (as OpenAI)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    err = batch.errors.data[0]
    assert (err.line, err.param, err.code) == (4, "body.temperature", "decimal_above_max_value")
    f = client.files.create(
        file=("responses.jsonl", "".join(buf.getvalue().splitlines(True)[:3]).encode()), purpose="batch"
    )
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/responses", completion_window="24h")
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3  # type: ignore[union-attr]
    assert batch.usage is not None and batch.usage.input_tokens > 0
    lines = [json.loads(x) for x in client.files.content(batch.output_file_id or "").text.splitlines()]
    for line in lines:
        resp = Response.model_validate(line["response"]["body"])  # the SDK's own type parses each body
        text = {"t0": "first tweet", "t1": "second tweet", "t2": "third tweet"}[line["custom_id"]]
        assert json.loads(resp.output_text)["label"] == LABELS[zlib.crc32(text.encode()) % 3]
