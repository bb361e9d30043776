"""The official `anthropic` SDK, exactly as its documentation shows, against `coldbatch serve` (echo fixture):
only `base_url` and the key differ from talking to Anthropic.

Message Batches: create with inline requests → poll retrieve → iterate results; cancel; list (newest first,
paged by the SDK); delete. Messages: `messages.create`, structured output, errors in Anthropic's envelope,
`x-api-key` auth and per-key isolation.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import anthropic
import pytest
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from anthropic.types.messages.batch_create_params import Request

from coldbatch.engines.echo import EchoEngine

from .conftest import Server

LABELS = ["negative", "neutral", "positive"]
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite + folder and on PostgreSQL + S3 (tests/_scaleout_infra.py): an Anthropic
    batch is an ordinary stored batch, so the dialect must behave the same on both stores."""
    return str(request.param)


def client(srv: Server, key: str = "sk-test") -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=srv.root, api_key=key, max_retries=0)
    srv._closers.append(c.close)
    return c


def params(text: str, **extra: Any) -> MessageCreateParamsNonStreaming:
    return {"model": "claude-echo", "max_tokens": 64, "messages": [{"role": "user", "content": text}], **extra}


def wait_ended(c: anthropic.Anthropic, batch_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = c.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended" or time.monotonic() > deadline:
            return batch
        time.sleep(0.1)


def test_message_batch_workflow_as_documented(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(EchoEngine(models={"claude-echo"}))
    c = client(srv)
    batch = c.messages.batches.create(
        requests=[
            Request(custom_id="my-first-request", params=params("Hello, world")),
            Request(
                custom_id="my-second-request",
                params=params(
                    "Hi again, friend",
                    system="Label it.",
                    output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
                ),
            ),
            Request(
                custom_id="bad-role",
                params={"model": "claude-echo", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]},
            ),  # type: ignore[list-item]
            Request(custom_id="unknown-model", params={**params("x"), "model": "claude-nope"}),
        ]
    )
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 4 and batch.ended_at is None
    assert batch.expires_at.timestamp() - batch.created_at.timestamp() == 86_400
    batch = wait_ended(c, batch.id)
    assert batch.processing_status == "ended" and batch.ended_at is not None
    assert batch.request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 2,
        "errored": 2,
        "canceled": 0,
        "expired": 0,
    }
    assert batch.results_url == f"{srv.root}/v1/messages/batches/{batch.id}/results"
    MessageBatch.model_validate(srv.http().get(f"/v1/messages/batches/{batch.id}").json())  # strictly
    for line in srv.http().get(f"/v1/messages/batches/{batch.id}/results").text.splitlines():
        MessageBatchIndividualResponse.model_validate_json(line)
    results = {r.custom_id: r.result for r in c.messages.batches.results(batch.id)}
    assert set(results) == {"my-first-request", "my-second-request", "bad-role", "unknown-model"}
    first = results["my-first-request"]
    assert first.type == "succeeded"
    assert first.message.content[0].type == "text" and first.message.content[0].text == "Hello, world"
    assert first.message.role == "assistant" and first.message.stop_reason == "end_turn"
    assert first.message.usage.input_tokens > 0 and first.message.usage.output_tokens > 0
    label = json.loads(results["my-second-request"].message.content[0].text)["label"]  # type: ignore[union-attr]
    assert label == LABELS[zlib.crc32(b"Hi again, friend") % 3]  # echo's choice for this text, as on chat
    bad = results["bad-role"]
    assert bad.type == "errored" and bad.error.error.type == "invalid_request_error"
    assert "messages[0].role" in bad.error.error.message and "robot" in bad.error.error.message
    assert results["unknown-model"].error.error.type == "not_found_error"  # type: ignore[union-attr]


def test_create_refuses_bad_custom_ids_with_anthropic_errors(server: Server) -> None:
    c = client(server)
    with pytest.raises(anthropic.BadRequestError) as err:
        c.messages.batches.create(requests=[Request(custom_id="has space", params=params("x"))])
    assert err.value.body["type"] == "error"  # type: ignore[index]
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "requests.0.custom_id" in err.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="unique"):
        c.messages.batches.create(
            requests=[Request(custom_id="a", params=params("x")), Request(custom_id="a", params=params("y"))]
        )
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve("msgbatch_doesnotexist")


def test_cancel_list_and_delete(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(EchoEngine(latency=0.05, max_concurrency=2))
    c = client(srv)
    done = c.messages.batches.create(requests=[Request(custom_id="only", params=params("quick"))])
    done = wait_ended(c, done.id)
    slow = c.messages.batches.create(
        requests=[Request(custom_id=f"r{i}", params=params(f"text {i}")) for i in range(400)]
    )
    canceling = c.messages.batches.cancel(slow.id)
    assert canceling.processing_status in ("canceling", "ended") and canceling.cancel_initiated_at is not None
    slow = wait_ended(c, slow.id)
    counts = slow.request_counts
    assert counts.canceled > 0 and counts.succeeded + counts.canceled == 400 and counts.errored == 0
    kinds = [r.result.type for r in c.messages.batches.results(slow.id)]
    assert len(kinds) == 400 and kinds.count("canceled") == counts.canceled
    assert c.messages.batches.cancel(done.id).processing_status == "ended"  # nothing to cancel: returned as is
    listed = [b.id for b in c.messages.batches.list(limit=1)]  # the SDK follows the pages
    assert listed == [slow.id, done.id]  # newest first
    assert srv.http().get("/v1/batches").json()["data"] == []  # not an OpenAI batch
    deleted = c.messages.batches.delete(done.id)
    assert deleted.id == done.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve(done.id)
    assert [b.id for b in c.messages.batches.list()] == [slow.id]


def test_messages_create_and_its_errors(server: Server) -> None:
    c = client(server)
    msg = c.messages.create(
        model="claude-echo",
        max_tokens=1024,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello, Claude"}],
    )
    assert msg.type == "message" and msg.content[0].text == "Hello, Claude"  # type: ignore[union-attr]
    assert msg.id.startswith("msg_") and msg.model == "claude-echo" and msg.stop_reason == "end_turn"
    cut = c.messages.create(model="claude-echo", max_tokens=1, messages=[{"role": "user", "content": "a b c d e f"}])
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 1
    blocks = c.messages.create(
        model="claude-echo",
        max_tokens=64,
        messages=[{"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]}],
    )
    assert blocks.content[0].text == "one two"  # type: ignore[union-attr]
    with pytest.raises(anthropic.BadRequestError) as err:
        c.messages.create(
            model="claude-echo",
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
                    ],
                }
            ],
        )
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "not supported" in err.value.body["error"]["message"]  # type: ignore[index]
    raw = server.http().post("/v1/messages", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert raw.status_code == 400  # (the SDK refuses to send this one itself)
    assert raw.json() == {
        "type": "error",
        "request_id": None,
        "error": {"type": "invalid_request_error", "message": "max_tokens: Missing required parameter: 'max_tokens'."},
    }


def test_keys_x_api_key_and_isolation(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(api_keys=["sk-a", "sk-b"])
    a, b = client(srv, "sk-a"), client(srv, "sk-b")
    batch = a.messages.batches.create(requests=[Request(custom_id="x", params=params("mine"))])
    with pytest.raises(anthropic.NotFoundError):
        b.messages.batches.retrieve(batch.id)
    assert [x.id for x in b.messages.batches.list()] == []
    with pytest.raises(anthropic.AuthenticationError) as err:
        client(srv, "sk-wrong").messages.batches.list()
    assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    http = srv.http(api_key=None)
    ok = http.post(
        "/v1/messages", headers={"x-api-key": "sk-b", "anthropic-version": "2023-06-01"}, json=params("by x-api-key")
    )
    assert ok.status_code == 200 and ok.json()["content"][0]["text"] == "by x-api-key"
    anthropic.types.Message.model_validate(ok.json())  # strictly: every field the SDK's type requires
    assert http.post("/v1/messages", headers={"x-api-key": "nope"}, json=params("x")).status_code == 401
