"""The official `openai` SDK against `coldbatch serve`, changing nothing but `base_url`.

One test (or parametrized group) per item of the compatibility checklist at the end of
reference/openai-batch-spec.md; the item number is in each test's name (`test_01_…` … `test_20_…`).
Items 15-17 (out-of-order output, ≥ 250 MB downloads, retry injection) are not covered here.
Tests that need a newer SDK than the one installed skip themselves (see `scripts/sdk-matrix`).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Batch, FileDeleted, FileObject

from coldbatch.engines.echo import EchoEngine

from .conftest import FAST, ServeFactory, Server

SDK = tuple(int(p) for p in re.findall(r"\d+", openai.__version__)[:3])


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite + folder and on PostgreSQL + S3 (tests/_scaleout_infra.py): the OpenAI
    surface and per-key isolation must be the same on both."""
    return str(request.param)


def needs_sdk(version: tuple[int, ...], why: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(version > SDK, reason=f"openai {openai.__version__} < {version}: {why}")


CHAT, RESPONSES, EMBEDDINGS = "/v1/chat/completions", "/v1/responses", "/v1/embeddings"
COMPLETIONS, MODERATIONS = "/v1/completions", "/v1/moderations"
BODIES: dict[str, dict[str, Any]] = {
    CHAT: {"model": "m", "messages": [{"role": "user", "content": "hello there"}]},
    RESPONSES: {"model": "m", "input": "hello there"},
    EMBEDDINGS: {"model": "m", "input": "hello there"},
    COMPLETIONS: {"model": "m", "prompt": "hello there"},
    MODERATIONS: {"input": "hello there"},
}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
DAY, THIRTY_DAYS = 86_400, 2_592_000
ENVELOPE_KEYS = {"message", "type", "param", "code"}


# -- helpers -------------------------------------------------------------------------------------------------
def req(cid: str, url: str = CHAT, **body: Any) -> dict[str, Any]:
    """One input line; keyword arguments are merged into the endpoint's default body."""
    return {"custom_id": cid, "method": "POST", "url": url, "body": {**BODIES[url], **body}}


def jsonl(lines: Iterable[dict[str, Any] | str | bytes]) -> bytes:
    out = []
    for ln in lines:
        out.append(ln if isinstance(ln, bytes) else ln.encode() if isinstance(ln, str) else json.dumps(ln).encode())
    return b"".join(x + b"\n" for x in out)


def upload(
    client: openai.OpenAI, lines: Iterable[dict[str, Any] | str | bytes] | bytes, name: str = "input.jsonl"
) -> FileObject:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, data, "application/jsonl"), purpose="batch")


def wait(client: openai.OpenAI, batch_id: str, until: Iterable[str] = TERMINAL, timeout: float = 20.0) -> Batch:
    """Poll every 0.05 s until the batch reaches one of `until`; fail after `timeout` seconds."""
    wanted, deadline = set(until), time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in wanted:
            return b
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {b.status!r} after {timeout} s (wanted {sorted(wanted)})")
        time.sleep(0.05)


def run_batch(
    client: openai.OpenAI, lines: Iterable[dict[str, Any] | str | bytes] | bytes, endpoint: str = CHAT, **create: Any
) -> Batch:
    f = upload(client, lines)
    b = client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window=create.pop("completion_window", "24h"),
        **create,
    )
    return wait(client, b.id)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    return [json.loads(ln) for ln in client.files.content(file_id).content.splitlines() if ln.strip()]


def raw(srv: Server, path: str, api_key: str | None = "sk-test") -> dict[str, Any]:
    r = srv.http(api_key).get(path)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def error_codes(b: Batch) -> list[tuple[str | None, int | None, str | None]]:
    assert b.errors is not None and b.errors.data is not None
    return [(e.code, e.line, e.param) for e in b.errors.data]


def assert_envelope(
    err: openai.APIStatusError,
    status: int,
    *,
    code: str | None = None,
    param: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The SDK raised for `status`, and the body is OpenAI's `{"error": {message, type, param, code}}`."""
    assert err.status_code == status
    body = err.response.json()
    assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, body
    e = body["error"]
    assert isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str)
    assert err.request_id and err.request_id.startswith("req_")
    if code is not None:
        assert e["code"] == code and err.code == code
    if param is not None:
        assert e["param"] == param and err.param == param
    if message is not None:
        assert e["message"] == message
    return e  # type: ignore[no-any-return]


def check_output_line(line: dict[str, Any], *, ok: bool) -> None:
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_") and isinstance(line["custom_id"], str)
    resp = line["response"]
    assert set(resp) == {"status_code", "request_id", "body"}
    assert resp["request_id"].startswith("req_") and isinstance(resp["body"], dict)
    assert line["error"] is None
    if ok:
        assert resp["status_code"] == 200
    else:
        assert resp["status_code"] >= 400 and isinstance(resp["body"]["error"]["message"], str)


# -- 1-5: files ----------------------------------------------------------------------------------------------
def test_01_file_create_fields(client: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    data = jsonl([req("a"), req("b")])
    path.write_bytes(data)
    with path.open("rb") as fh:
        f = client.files.create(file=fh, purpose="batch")
    assert isinstance(f, FileObject)
    assert f.id.startswith("file-") and f.object == "file" and f.purpose == "batch"
    assert f.status == "processed" and f.bytes == len(data) and f.filename == "x.jsonl"
    assert isinstance(f.created_at, int) and f.expires_at == f.created_at + THIRTY_DAYS
    g = client.files.create(file=path, purpose="batch")  # a PathLike: the SDK reads it and sends its name
    assert (g.filename, g.bytes) == ("x.jsonl", len(data)) and g.id != f.id
    if hasattr(client.files, "wait_for_processing"):
        assert client.files.wait_for_processing(g.id, poll_interval=0.05, max_wait_seconds=5).status == "processed"
    u = client.files.create(file=("données 1.jsonl", data), purpose="batch")
    assert client.files.retrieve(u.id).filename == "données 1.jsonl"
    assert client.files.content(u.id).content == data


@needs_sdk((1, 100), "files.create(expires_after=...) arrived in 1.100.0")
def test_02_expires_after_form_fields(client: openai.OpenAI) -> None:
    data = jsonl([req("a")])
    f = client.files.create(
        file=("a.jsonl", data), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.expires_at == f.created_at + 3600
    for seconds in (3599, THIRTY_DAYS + 1):
        with pytest.raises(openai.BadRequestError) as ei:
            client.files.create(
                file=("a.jsonl", data), purpose="batch", expires_after={"anchor": "created_at", "seconds": seconds}
            )
        assert_envelope(ei.value, 400, param="expires_after.seconds", code="invalid_value")


def test_03_tuple_and_raw_bytes_upload(client: openai.OpenAI) -> None:
    data = jsonl([req("a")])
    f = client.files.create(file=("t.jsonl", data, "application/jsonl"), purpose="batch")
    assert (f.filename, f.bytes, f.status) == ("t.jsonl", len(data), "processed")
    # Raw bytes reach us named "upload" (the SDK's name), without an extension: JSONL content is accepted,
    # as OpenAI does (issue 15, item 8); other content is not.
    r = client.files.create(file=data, purpose="batch")
    assert (r.filename, r.bytes, r.purpose) == ("upload", len(data), "batch")
    with pytest.raises(openai.BadRequestError) as ei:
        client.files.create(file=b"id,text\n1,hello\n", purpose="batch")
    assert_envelope(ei.value, 400, message="Invalid file format for Batch API. Must be .jsonl")
    # Other purposes take any name, raw bytes included.
    g = client.files.create(file=data, purpose="user_data")
    assert (g.filename, g.purpose, g.expires_at) == ("upload", "user_data", None)


@pytest.mark.parametrize("name", ["x.json", "x.txt", "x.jsonl.gz", "jsonl.txt"])  # no extension: see test_hardening
def test_03_non_jsonl_rejected(client: openai.OpenAI, name: str) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.files.create(file=(name, jsonl([req("a")])), purpose="batch")
    e = assert_envelope(ei.value, 400, message="Invalid file format for Batch API. Must be .jsonl")
    assert e["type"] == "invalid_request_error"
    assert not [f for f in client.files.list() if f.filename == name]


@pytest.mark.parametrize("size", [1_001, 3_000_000])
def test_03_oversize_rejected(serve: ServeFactory, size: int) -> None:
    srv = serve(max_upload_bytes=1_000)
    client = srv.client()
    ok = client.files.create(file=("ok.jsonl", b"x" * 1_000), purpose="batch")
    assert ok.bytes == 1_000
    with pytest.raises(openai.BadRequestError) as ei:
        client.files.create(file=("big.jsonl", b"x" * size), purpose="batch")
    e = assert_envelope(ei.value, 400, message="File is too large.")
    assert e["type"] == "invalid_request_error"
    assert srv.count("POST", "/v1/files") == 2  # a clean 400, not a dropped connection the SDK retried
    assert [f.id for f in client.files.list()] == [ok.id]
    assert srv.blob_keys() == [ok.id]  # the refused upload left nothing behind, not even a partial write


def test_04_retrieve_content_delete(client: openai.OpenAI) -> None:
    data = jsonl([req("a"), req("b")])
    f = upload(client, data)
    assert client.files.retrieve(f.id) == f
    assert client.files.content(f.id).content == data
    if hasattr(client.files, "retrieve_content"):  # deprecated; gone from some SDKs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            text = client.files.retrieve_content(f.id)
        assert isinstance(text, str) and text == data.decode()
    d = client.files.delete(f.id)
    assert isinstance(d, FileDeleted) and (d.id, d.object, d.deleted) == (f.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as ei:
            call(f.id)
        assert_envelope(ei.value, 404)


def test_05_files_list_pagination(server: Server, client: openai.OpenAI) -> None:
    ids = [upload(client, [req("a")], name=f"f{i}.jsonl").id for i in range(5)]
    client.files.create(file=("other.jsonl", b"{}\n"), purpose="user_data")  # filtered out by purpose
    newest_first = ids[::-1]
    page = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in page.data] == newest_first[:2]
    assert [f.id for f in client.files.list(purpose="batch", limit=2)] == newest_first  # auto-pagination
    assert [f.id for f in client.files.list(purpose="batch", limit=2, order="asc")] == ids
    assert [f.id for f in client.files.list(purpose="batch", limit=2, order="desc")] == newest_first
    pages, after = [], None
    while True:  # by hand, with `after` = the last id, as the SDK does
        kw: dict[str, Any] = {"after": after} if after else {}
        p = client.files.list(purpose="batch", limit=2, order="asc", **kw)
        if not p.data:
            break
        pages.append([f.id for f in p.data])
        after = p.data[-1].id
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    env = raw(server, "/v1/files?purpose=batch&limit=2&order=asc")
    assert env["object"] == "list" and env["has_more"] is True
    assert (env["first_id"], env["last_id"]) == (ids[0], ids[1])
    assert [f["id"] for f in env["data"]] == ids[:2]
    last = raw(server, f"/v1/files?purpose=batch&limit=2&order=asc&after={ids[-1]}")
    assert (last["object"], last["data"], last["has_more"]) == ("list", [], False)
    assert len(raw(server, "/v1/files")["data"]) == 6


# -- 6: create ------------------------------------------------------------------------------------------------
def test_06_batch_create_fields(client: openai.OpenAI) -> None:
    f = upload(client, [req("a")])
    b = client.batches.create(
        input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"run": "r1", "team": "x"}
    )
    assert isinstance(b, Batch) and b.id.startswith("batch_")
    assert (b.object, b.status, b.completion_window, b.endpoint) == ("batch", "validating", "24h", CHAT)
    assert b.input_file_id == f.id and b.metadata == {"run": "r1", "team": "x"}
    assert b.request_counts is not None and (
        b.request_counts.total,
        b.request_counts.completed,
        b.request_counts.failed,
    ) == (0, 0, 0)
    assert isinstance(b.created_at, int) and b.expires_at == b.created_at + DAY
    assert b.output_file_id is None and b.error_file_id is None and b.errors is None


def test_06_create_missing_input_file_id(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.post("/batches", cast_to=Batch, body={"endpoint": CHAT, "completion_window": "24h"})
    assert_envelope(
        ei.value,
        400,
        code="missing_required_parameter",
        param="input_file_id",
        message="Missing required parameter: 'input_file_id'.",
    )
    r = server.http().post("/v1/batches", json={"endpoint": CHAT, "completion_window": "24h"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_id"


@pytest.mark.parametrize(
    ("create", "code", "param"),
    [
        ({"endpoint": "/v1/invalid/endpoint"}, "invalid_value", "endpoint"),
        ({"completion_window": "48h"}, "invalid_value", "completion_window"),
        ({"completion_window": "1h"}, "invalid_value", "completion_window"),  # only "24h" unless allow_short_windows
        ({"metadata": {"tags": ["a", "b"]}}, "invalid_type", "metadata.tags"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, None, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, None, "metadata"),
        ({"metadata": {"k": "v" * 513}}, None, "metadata.k"),
    ],
    ids=[
        "endpoint",
        "window-48h",
        "window-1h-strict",
        "metadata-type",
        "metadata-17-keys",
        "metadata-key-65",
        "metadata-value-513",
    ],
)
def test_06_create_rejected(serve: ServeFactory, create: dict[str, Any], code: str | None, param: str) -> None:
    srv = serve(allow_short_windows=False)
    client = srv.client()
    params: dict[str, Any] = {"input_file_id": "file-whatever", "endpoint": CHAT, "completion_window": "24h", **create}
    with pytest.raises(openai.BadRequestError) as ei:
        client.batches.create(**params)
    assert_envelope(ei.value, 400, code=code, param=param)
    assert srv.count("POST", "/v1/batches") == 1
    assert raw(srv, "/v1/batches")["data"] == []


def test_06_metadata_at_the_limits(client: openai.OpenAI) -> None:
    meta = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    b = client.batches.create(
        input_file_id=upload(client, [req("a")]).id, endpoint=CHAT, completion_window="24h", metadata=meta
    )
    assert b.metadata == meta


@needs_sdk((1, 100), "batches.create(output_expires_after=...) arrived in 1.100.0")
def test_06_output_expires_after(client: openai.OpenAI) -> None:
    f = upload(client, [req("a"), req("b", echo_fail=400)])
    b = client.batches.create(
        input_file_id=f.id,
        endpoint=CHAT,
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    done = wait(client, b.id)
    for fid in (done.output_file_id, done.error_file_id):
        assert fid
        out = client.files.retrieve(fid)
        assert out.expires_at == out.created_at + 7200
    with pytest.raises(openai.BadRequestError) as ei:
        client.batches.create(
            input_file_id=f.id,
            endpoint=CHAT,
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 60},
        )
    assert_envelope(ei.value, 400, param="output_expires_after.seconds")


# -- 7-9: running -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES, EMBEDDINGS, COMPLETIONS, MODERATIONS])
def test_07_happy_path(server: Server, client: openai.OpenAI, endpoint: str) -> None:
    lines = [req(f"r{i}", endpoint) for i in range(3)]
    b = run_batch(client, lines, endpoint)
    assert b.status == "completed", b.errors
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (3, 3, 0)
    assert b.in_progress_at is not None and b.finalizing_at is not None and b.completed_at is not None
    assert b.created_at <= b.in_progress_at <= b.finalizing_at <= b.completed_at
    assert b.failed_at is b.expired_at is b.cancelling_at is b.cancelled_at is None
    assert b.output_file_id and b.error_file_id is None
    out = client.files.retrieve(b.output_file_id)
    assert out.purpose == "batch_output" and out.status == "processed"
    rows = read_lines(client, b.output_file_id)
    for row in rows:
        check_output_line(row, ok=True)
    assert sorted(r["custom_id"] for r in rows) == ["r0", "r1", "r2"]
    body = rows[0]["response"]["body"]
    expected_object = {
        CHAT: "chat.completion",
        RESPONSES: "response",
        EMBEDDINGS: "list",
        COMPLETIONS: "text_completion",
        MODERATIONS: None,
    }[endpoint]
    assert body.get("object") == expected_object
    sdk_type = {
        CHAT: openai.types.chat.ChatCompletion,
        COMPLETIONS: openai.types.Completion,
        EMBEDDINGS: openai.types.CreateEmbeddingResponse,
    }.get(endpoint)
    if sdk_type is not None:  # the bodies are what the synchronous endpoint's SDK type expects
        sdk_type.model_validate(body)


def test_08_mixed_batch(client: openai.OpenAI) -> None:
    b = run_batch(client, [req("good"), req("bad", echo_fail=400)])
    assert b.status == "completed"
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed, b.request_counts.total) == (1, 1, 2)
    [ok] = read_lines(client, b.output_file_id)
    [bad] = read_lines(client, b.error_file_id)
    check_output_line(ok, ok=True)
    check_output_line(bad, ok=False)
    assert (ok["custom_id"], bad["custom_id"]) == ("good", "bad")
    assert bad["response"]["status_code"] == 400 and bad["error"] is None
    assert set(bad["response"]["body"]["error"]) == ENVELOPE_KEYS
    assert client.files.retrieve(b.error_file_id).purpose == "batch_output"  # type: ignore[arg-type]


def test_09_all_failing_and_all_succeeding(client: openai.OpenAI) -> None:
    failing = run_batch(client, [req("a", echo_fail=400), req("b", echo_fail=503)])
    assert failing.status == "completed"
    assert failing.output_file_id is None and failing.error_file_id
    assert failing.request_counts is not None
    assert (failing.request_counts.completed, failing.request_counts.failed) == (0, 2)
    assert sorted(r["response"]["status_code"] for r in read_lines(client, failing.error_file_id)) == [400, 503]
    fine = run_batch(client, [req("a"), req("b")])
    assert fine.status == "completed" and fine.output_file_id and fine.error_file_id is None


# -- 10: validation failures ----------------------------------------------------------------------------------
GOOD = req("good")
VALIDATION_CASES: dict[str, tuple[list[Any] | bytes, list[tuple[str, int | None, str | None]]]] = {
    "invalid_json_line": ([GOOD, '{"custom_id": "x", not json', req("other")], [("invalid_json_line", 2, None)]),
    "missing_fields": (
        [
            {k: v for k, v in req(f"m{i}").items() if k != key}
            for i, key in enumerate(("custom_id", "method", "url", "body"))
        ],
        [
            ("missing_required_parameter", 1, "custom_id"),
            ("missing_required_parameter", 2, "method"),
            ("missing_required_parameter", 3, "url"),
            ("missing_required_parameter", 4, "body"),
        ],
    ),
    "invalid_url": ([GOOD, req("e", EMBEDDINGS)], [("invalid_url", 2, "url")]),
    "streaming_unsupported": ([GOOD, req("s", stream=True)], [("streaming_unsupported", 2, "body.stream")]),
    "duplicate_custom_id": ([GOOD, req("x"), req("good")], [("duplicate_custom_id", 3, "custom_id")]),
    "mismatched_model": ([GOOD, req("x", model="other-model")], [("mismatched_model", 2, "body.model")]),
    "empty_file": (b"", [("empty_file", None, None)]),
}


def assert_failed(b: Batch, expected: list[tuple[str, int | None, str | None]]) -> None:
    assert b.status == "failed"
    assert b.failed_at is not None and b.failed_at >= b.created_at
    assert b.errors is not None and b.errors.object == "list"
    assert error_codes(b) == expected
    assert all(e.message for e in b.errors.data or [])
    assert b.output_file_id is None and b.error_file_id is None and b.in_progress_at is None
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (0, 0, 0)


@pytest.mark.parametrize("case", sorted(VALIDATION_CASES))
def test_10_validation_failures(client: openai.OpenAI, case: str) -> None:
    lines, expected = VALIDATION_CASES[case]
    assert_failed(run_batch(client, lines), expected)


def test_10_endpoint_mismatch_recorded_openai_case(client: openai.OpenAI) -> None:
    """The exact line llama-stack recorded from OpenAI (Aug 2025): url /v1/embeddings with a chat body in a
    chat batch. OpenAI answers with one error, `invalid_url` on line 1, param `url`."""
    line = {"custom_id": "endpoint-mismatch", "method": "POST", "url": EMBEDDINGS, "body": BODIES[CHAT]}
    b = run_batch(client, [line])
    assert b.status == "failed"
    assert error_codes(b) == [("invalid_url", 1, "url")]


def test_10_model_not_found(serve: ServeFactory) -> None:
    client = serve(EchoEngine(models={"m"})).client()
    b = run_batch(client, [req("a", model="nonexistent-model-xyz")])
    assert_failed(b, [("model_not_found", 1, "body.model")])
    assert run_batch(client, [req("a")]).status == "completed"


def test_10_too_many_tasks(client: openai.OpenAI) -> None:
    head = b'{"custom_id":"'
    tail = b'","method":"POST","url":"/v1/moderations","body":{"input":"x"}}\n'
    data = b"".join(head + str(i).encode() + tail for i in range(50_001))
    b = run_batch(client, data, MODERATIONS)
    assert_failed(b, [("too_many_tasks", None, None)])


def test_10_nonexistent_input_file(client: openai.OpenAI) -> None:
    """OpenAI accepts an unknown id and fails the batch later; coldbatch answers 404 at create (issue 15: another
    key's file must be refused at create, and an unknown id must look the same; docs/decisions.md)."""
    with pytest.raises(openai.NotFoundError) as ei:
        client.batches.create(input_file_id="file-doesnotexist", endpoint=CHAT, completion_window="24h")
    assert_envelope(ei.value, 404, param="input_file_id", message="No file found with id 'file-doesnotexist'.")
    assert client.batches.list().data == []


def test_10_token_limit_exceeded(serve: ServeFactory) -> None:
    client = serve(executor=replace(FAST, enqueued_token_limit=5)).client()
    b = run_batch(client, [req("a", messages=[{"role": "user", "content": "a prompt of more than five tokens"}])])
    assert_failed(b, [("token_limit_exceeded", None, None)])
    assert b.errors is not None and b.errors.data and "Enqueued token limit" in (b.errors.data[0].message or "")


# -- 11-13: cancel, expiry, unknown ids ------------------------------------------------------------------------
def test_11_cancel_in_progress(serve: ServeFactory) -> None:
    srv = serve(EchoEngine(latency=0.2, max_concurrency=1))
    client = srv.client()
    f = upload(client, [req(f"r{i}") for i in range(8)])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 10
    while (b := client.batches.retrieve(b.id)).request_counts is None or b.request_counts.completed < 1:
        assert time.monotonic() < deadline, b
        time.sleep(0.05)
    c = client.batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at is not None and c.cancelled_at is None
    twice = client.batches.cancel(b.id)  # idempotent while cancelling
    assert twice.status in ("cancelling", "cancelled") and twice.cancelling_at == c.cancelling_at
    done = wait(client, b.id)
    assert done.status == "cancelled" and done.cancelled_at is not None and done.cancelled_at >= c.cancelling_at
    assert done.cancelling_at == c.cancelling_at
    outputs, errors = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert outputs and errors
    for row in outputs:
        check_output_line(row, ok=True)
    for row in errors:
        assert row["response"] is None and row["error"]["code"] == "batch_cancelled" and row["error"]["message"]
    ids = [r["custom_id"] for r in outputs + errors]
    assert sorted(ids) == sorted(f"r{i}" for i in range(8))
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (len(outputs), len(errors))
    again = client.batches.cancel(b.id)  # cancelling a cancelled batch returns it
    assert again.id == b.id and again.status == "cancelled" and again.cancelled_at == done.cancelled_at


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_11_cancel_terminal_is_409_not_retried(server: Server, final: str) -> None:
    client = server.client()  # default max_retries=2: the SDK would retry a plain 409
    b = run_batch(client, [req("a")] if final == "completed" else b"")
    assert b.status == final
    with pytest.raises(openai.ConflictError) as ei:
        client.batches.cancel(b.id)
    assert_envelope(ei.value, 409, message=f"Cannot cancel a batch with status '{final}'.")
    assert ei.value.response.headers["x-should-retry"] == "false"
    assert server.count("POST", f"/v1/batches/{b.id}/cancel") == 1
    assert client.batches.retrieve(b.id).status == final


def test_12_expiry(serve: ServeFactory) -> None:
    srv = serve(EchoEngine(latency=0.25, max_concurrency=1))
    client = srv.client()
    n = 20
    b = run_batch(client, [req(f"r{i}") for i in range(n)], completion_window="2s")
    assert b.status == "expired" and b.expired_at is not None and b.expires_at == b.created_at + 2
    assert b.expired_at >= b.expires_at and b.completed_at is None
    outputs, errors = read_lines(client, b.output_file_id), read_lines(client, b.error_file_id)
    assert outputs and errors
    for row in outputs:
        check_output_line(row, ok=True)
    for row in errors:
        assert row["response"] is None
        assert row["error"] == {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    assert sorted(r["custom_id"] for r in outputs + errors) == sorted(f"r{i}" for i in range(n))
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
        n,
        len(outputs),
        len(errors),
    )
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(b.id)


@pytest.mark.alone  # how far the second batch got when the first completed is timing: run by itself (scripts/test)
def test_12_batches_run_in_turn_and_a_waiting_batch_cancels_or_expires_at_once(serve: ServeFactory) -> None:
    """One batch executes at a time (oldest first): the first finishes while later ones have not started,
    so a client can collect it early. A batch waiting its turn still expires on time, and cancels at once."""
    srv = serve(EchoEngine(latency=0.05, max_concurrency=1))
    client = srv.client()
    ids = []
    for k, (n, window) in enumerate([(12, "24h"), (200, "24h"), (5, "2s"), (5, "24h")]):
        f = upload(client, [req(f"b{k}-{i}") for i in range(n)])
        ids.append(client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window=window).id)
    assert wait(client, ids[0], until=["completed"]).status == "completed"
    second = client.batches.retrieve(ids[1])
    assert second.status == "in_progress" and second.request_counts is not None
    assert second.request_counts.completed <= 2, "the second batch ran alongside the first"
    late = wait(client, ids[2], timeout=6)  # its 2 s window ends while the second batch still runs
    assert late.status == "expired" and late.request_counts is not None
    assert (late.request_counts.completed, late.request_counts.failed) == (0, 5)
    assert client.batches.retrieve(ids[1]).status == "in_progress"
    assert client.batches.retrieve(ids[3]).status == "in_progress"
    client.batches.cancel(ids[3])  # waiting: cancelled without running a line
    cancelled = wait(client, ids[3], timeout=3)
    assert cancelled.status == "cancelled" and cancelled.request_counts is not None
    assert cancelled.request_counts.completed == 0
    assert client.batches.retrieve(ids[1]).status == "in_progress"


def test_13_unknown_batch_is_404(client: openai.OpenAI) -> None:
    for call in (client.batches.retrieve, client.batches.cancel):
        with pytest.raises(openai.NotFoundError) as ei:
            call("batch_nope")
        assert "batch_nope" in assert_envelope(ei.value, 404)["message"]


# -- 14: list --------------------------------------------------------------------------------------------------
def test_14_batches_list(server: Server, client: openai.OpenAI) -> None:
    f = upload(client, [req("a")])
    ids = [client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id for _ in range(5)]
    newest_first = ids[::-1]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    before = server.count("GET", "/v1/batches")
    assert [b.id for b in page] == newest_first  # iterating the page follows `after` through every page
    # 5 batches in pages of 2: SDKs >= 1.62 stop on has_more=false (2 more requests); older ones go on
    # until an empty page (3 more), which `after=<last id>` must return.
    assert server.count("GET", "/v1/batches") - before == (2 if SDK >= (1, 62) else 3)
    assert [b.id for b in client.batches.list(after=ids[3], limit=2)] == ids[2::-1]
    env = raw(server, "/v1/batches?limit=2")
    assert env["object"] == "list" and env["has_more"] is True
    assert (env["first_id"], env["last_id"]) == (ids[4], ids[3])
    end = raw(server, f"/v1/batches?limit=2&after={ids[0]}")
    assert (end["object"], end["data"], end["has_more"]) == ("list", [], False)
    assert "first_id" in end and "last_id" in end
    assert client.batches.list(after=ids[0]).data == []
    for limit in (0, 101):
        with pytest.raises(openai.BadRequestError) as ei:
            client.batches.list(limit=limit)
        assert_envelope(ei.value, 400, param="limit")
    assert len(client.batches.list(limit=100).data) == 5


# -- 18: error envelope -----------------------------------------------------------------------------------------
def test_18_error_envelope_everywhere(serve: ServeFactory) -> None:
    srv = serve(api_keys=["k1"])
    http = srv.http("k1")
    cases = [
        (http.get("/v1/nope"), 404),  # unknown route
        (http.get("/nope"), 404),
        (http.delete("/v1/batches"), 405),
        (http.put("/v1/files"), 405),
        (http.get("/v1/files/file-nope"), 404),
        (http.get("/v1/files/file-nope/content"), 404),
        (http.delete("/v1/files/file-nope"), 404),
        (http.get("/v1/batches/batch_nope"), 404),
        (http.post("/v1/batches/batch_nope/cancel"), 404),
        (http.post("/v1/batches", content=b"{"), 400),
        (http.post("/v1/batches", json={}), 400),
        (http.post("/v1/files", json={}), 400),
        (http.get("/v1/batches?limit=0"), 400),
        (http.get("/v1/files?order=up"), 400),
        (srv.http(None).get("/v1/batches"), 401),
        (srv.http("wrong").post("/v1/files"), 401),
    ]
    for r, status in cases:
        where = f"{r.request.method} {r.request.url}"
        assert r.status_code == status, (where, r.text)
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, (where, body)
        assert r.headers["content-type"].startswith("application/json"), where
        assert r.headers["x-request-id"].startswith("req_"), where
    assert "POST" in cases[2][0].headers["allow"]  # the 405 keeps its Allow header
    ok = http.get("/v1/batches")
    assert ok.headers["x-request-id"].startswith("req_")
    assert len({r.headers["x-request-id"] for r, _ in cases}) == len(cases)


def test_18_unexpected_error_is_a_500_envelope(server: Server, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    from coldbatch.store.postgres import PgStore
    from coldbatch.store.sqlite import SqliteStore

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected store failure")

    monkeypatch.setattr(PgStore if backend == "postgres" else SqliteStore, "list_batches", boom)
    client = server.client(max_retries=0)
    with pytest.raises(openai.InternalServerError) as ei:
        client.batches.list()
    e = assert_envelope(ei.value, 500)
    assert e["type"] == "server_error" and "injected" not in e["message"]


# -- 19-20: usage, parsing ----------------------------------------------------------------------------------------
def test_19_usage(server: Server, client: openai.OpenAI) -> None:
    b = run_batch(client, [req("a"), req("b", messages=[{"role": "user", "content": "a longer prompt here"}])])
    assert b.status == "completed"
    rows = read_lines(client, b.output_file_id)
    per_line = [r["response"]["body"]["usage"] for r in rows]
    assert all({"prompt_tokens", "completion_tokens", "total_tokens"} <= set(u) for u in per_line)
    obj = raw(server, f"/v1/batches/{b.id}")
    assert obj["model"] == "m"
    usage = obj["usage"]
    assert set(usage) == {
        "input_tokens",
        "input_tokens_details",
        "output_tokens",
        "output_tokens_details",
        "total_tokens",
    }
    assert usage["input_tokens"] == sum(u["prompt_tokens"] for u in per_line) > 0
    assert usage["output_tokens"] == sum(u["completion_tokens"] for u in per_line)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    if SDK >= (2, 0):  # Batch.model / Batch.usage are typed from 2.0.0
        assert b.model == "m" and b.usage is not None and b.usage.total_tokens == usage["total_tokens"]


def _strict(model: type[Any], obj: dict[str, Any]) -> None:
    model.model_validate(obj, strict=True)


def test_20_objects_parse_strictly(server: Server, client: openai.OpenAI) -> None:
    f = upload(client, [req("a"), req("b", echo_fail=400)])
    _strict(FileObject, raw(server, f"/v1/files/{f.id}"))
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"k": "v"})
    _strict(Batch, raw(server, f"/v1/batches/{b.id}"))  # validating
    done = wait(client, b.id)
    failed = run_batch(client, [req("a"), req("a")])
    for batch_id in (done.id, failed.id):
        obj = raw(server, f"/v1/batches/{batch_id}")
        _strict(Batch, obj)
        assert set(obj) >= set(Batch.model_fields)  # every declared key present, unset ones as null
    for fid in (done.output_file_id, done.error_file_id):
        _strict(FileObject, raw(server, f"/v1/files/{fid}"))
    page = raw(server, "/v1/batches")
    for item in page["data"]:
        _strict(Batch, item)
    for item in raw(server, "/v1/files")["data"]:
        _strict(FileObject, item)
    r = server.http().delete(f"/v1/files/{f.id}")
    _strict(FileDeleted, r.json())
    # Extra-field tolerance and defaults, as the SDK parses responses (non-strict construction)
    obj = raw(server, f"/v1/batches/{done.id}")
    extra = Batch.construct(**{**obj, "some_future_field": {"x": 1}})  # type: ignore[attr-defined]
    assert extra.id == done.id
    lean = Batch.model_validate({k: v for k, v in obj.items() if k not in ("usage", "errors", "metadata")})
    assert lean.errors is None and lean.metadata is None


# -- security -------------------------------------------------------------------------------------------------------
def test_auth_required(serve: ServeFactory) -> None:
    srv = serve(api_keys=["k1", "k2"])
    for key in ("wrong", "k1x", "Bearer k1", "K1"):
        c = srv.client(api_key=key)
        for call in (
            c.files.list,
            c.batches.list,
            lambda c=c: c.batches.retrieve("batch_x"),
            lambda c=c: upload(c, [req("a")]),
        ):
            with pytest.raises(openai.AuthenticationError) as ei:
                call()
            assert_envelope(ei.value, 401, code="invalid_api_key")
    no_key = srv.http(None)
    for r in (
        no_key.get("/v1/files"),
        no_key.get("/v1/batches"),
        no_key.post(CHAT, json=BODIES[CHAT]),
        no_key.get("/v1/models"),
        no_key.get("/v1/batches", headers={"authorization": "Basic azE6"}),
        no_key.get("/v1/batches", headers={"authorization": "Bearer"}),
    ):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    assert srv.count("GET", "/v1/files") == 5  # 4 SDK calls + 1 raw: a 401 is not retried
    assert srv.client(api_key="k1").batches.list().data == []
    assert srv.client(api_key="k2").files.list().data == []


def test_keys_are_isolated(serve: ServeFactory) -> None:
    srv = serve(api_keys=["k1", "k2"])
    one, two = srv.client(api_key="k1"), srv.client(api_key="k2")
    f = upload(one, [req("a")])
    b = one.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    for call, arg in (
        (two.files.retrieve, f.id),
        (two.files.content, f.id),
        (two.files.delete, f.id),
        (two.batches.retrieve, b.id),
        (two.batches.cancel, b.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call(arg)
    assert two.files.list().data == [] and two.batches.list().data == []
    with pytest.raises(openai.NotFoundError):  # another key's file is refused at create, like an unknown id
        two.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert two.batches.list().data == []
    done = wait(one, b.id)
    assert done.status == "completed" and done.output_file_id
    with pytest.raises(openai.NotFoundError):
        two.files.content(done.output_file_id)
    assert [x.id for x in one.batches.list()] == [b.id]
    assert one.files.content(f.id).content == jsonl([req("a")])


@pytest.mark.parametrize("name", ["../x.jsonl", "a/b.jsonl", "..\\x.jsonl", "/tmp/abs.jsonl", "..", "../../.jsonl"])
def test_path_like_filenames_rejected(server: Server, client: openai.OpenAI, tmp_path: Path, name: str) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.files.create(file=(name, jsonl([req("a")])), purpose="batch")
    assert_envelope(ei.value, 400, param="file")
    assert client.files.list().data == []
    assert server.blob_keys() == []
    written = [p for p in tmp_path.rglob("*") if p.name in ("x.jsonl", "b.jsonl", "abs.jsonl")]
    assert written == [] and not Path("/tmp/abs.jsonl").exists()


@pytest.mark.parametrize("filename", [b"x\x00.jsonl", b"x\x1b.jsonl", b"../raw.jsonl", b"a\\b.jsonl"])
def test_control_characters_in_raw_filenames_rejected(server: Server, filename: bytes) -> None:
    """httpx percent-encodes control characters in filenames; a hand-made body can still send them raw."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n\r\n{}\r\n--b--\r\n'
    )
    r = server.http().post("/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400, r.text
    assert raw(server, "/v1/files")["data"] == []


MALFORMED_JSON = [b"{", b"", b"\xff\xfe", b"[]", b"null", b'"x"', b"1e999", b'{"a": 1,}', b"{}" * 3]
BAD_CREATE = [
    {"input_file_id": 1, "endpoint": CHAT, "completion_window": "24h"},
    {"input_file_id": ["f"], "endpoint": CHAT, "completion_window": "24h"},
    {"input_file_id": "f", "endpoint": ["x"], "completion_window": "24h"},
    {"input_file_id": "f", "endpoint": {"a": 1}, "completion_window": "24h"},
    {"input_file_id": "f", "endpoint": CHAT, "completion_window": 24},
    {"input_file_id": "f", "endpoint": CHAT, "completion_window": ["24h"]},
    {"input_file_id": "f", "endpoint": CHAT, "completion_window": "24h", "metadata": ["x"]},
    {"input_file_id": "f", "endpoint": CHAT, "completion_window": "24h", "metadata": "x"},
    {"input_file_id": "f", "endpoint": CHAT, "completion_window": "24h", "metadata": {"k": None}},
    {"input_file_id": "f", "endpoint": CHAT, "completion_window": "24h", "metadata": {"k": {"a": "b"}}},
    {
        "input_file_id": "f",
        "endpoint": CHAT,
        "completion_window": "24h",
        "output_expires_after": {"anchor": "created_at", "seconds": "x"},
    },
    {
        "input_file_id": "f",
        "endpoint": CHAT,
        "completion_window": "24h",
        "output_expires_after": {"anchor": "created_at", "seconds": [1]},
    },
    {
        "input_file_id": "f",
        "endpoint": CHAT,
        "completion_window": "24h",
        "output_expires_after": {"anchor": "created_at", "seconds": 10**30},
    },
    {
        "input_file_id": "f",
        "endpoint": CHAT,
        "completion_window": "24h",
        "output_expires_after": {"anchor": "created_at", "seconds": True},
    },
    {
        "input_file_id": "f",
        "endpoint": CHAT,
        "completion_window": "24h",
        "output_expires_after": {"anchor": "created_at", "seconds": 3600.5},
    },
    {"input_file_id": "f", "endpoint": CHAT, "completion_window": "24h", "output_expires_after": "1h"},
]


@pytest.mark.parametrize("content", MALFORMED_JSON)
def test_malformed_json_body_is_400(server: Server, content: bytes) -> None:
    http = server.http()
    for path in ("/v1/batches", CHAT, EMBEDDINGS):
        r = http.post(path, content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, content, r.text)
        assert set(r.json()["error"]) == ENVELOPE_KEYS


@pytest.mark.parametrize("body", BAD_CREATE, ids=range(len(BAD_CREATE)))
def test_badly_typed_create_is_400(server: Server, body: dict[str, Any]) -> None:
    r = server.http().post("/v1/batches", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400, (body, r.text)
    assert set(r.json()["error"]) == ENVELOPE_KEYS and r.json()["error"]["param"]
    assert raw(server, "/v1/batches")["data"] == []


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b'{"purpose": "batch"}', "application/json"),
        (b"purpose=batch&file=x", "application/x-www-form-urlencoded"),
        (b"purpose=batch", None),
        (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n', "multipart/form-data"),
        (
            b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),  # no file part
        (b"garbage without any boundary", "multipart/form-data; boundary=b"),
        (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{}\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),  # no purpose
    ],
)
def test_non_multipart_upload_is_400(server: Server, content: bytes, ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    r = server.http().post("/v1/files", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == ENVELOPE_KEYS
    assert raw(server, "/v1/files")["data"] == []
