"""Issue 15: hostile bodies, odd uploads and full disks, against the real server on loopback.

Each test is the issue's reproduction, asserting what a client sees (status, envelope, message) and that the
server is still well afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import openai
import pytest

from coldbatch.engines.echo import EchoEngine

from .conftest import FAST, ServeFactory, Server
from .test_openai_sdk import CHAT, assert_envelope, jsonl, req, upload, wait

MB = 1_000_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`small_disk(bytes)`: a fresh tmpfs of that size (a real full disk: writes fail with ENOSPC). Needs root
    (mount); skipped where it cannot mount. Request it before `serve`, so servers stop before it unmounts."""
    mounts: list[Path] = []

    def make(size: int) -> Path:
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    yield make
    for mnt in reversed(mounts):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- 5: JSON body cap ----------------------------------------------------------------------------------------
def test_a_big_json_body_is_413_before_it_is_read_whole(server: Server, client: openai.OpenAI) -> None:
    f = upload(client, [req("a")])
    with pytest.raises(openai.APIStatusError) as ei:
        client.batches.create(
            input_file_id=f.id, endpoint=CHAT, completion_window="24h", extra_body={"padding": "x" * (2 * MB)}
        )
    assert_envelope(ei.value, 413, code="request_too_large")
    assert server.count("POST", "/v1/batches") == 1  # the SDK did not retry it

    def chunks() -> Iterator[bytes]:  # no content-length: only counting the stream can stop it
        for _ in range(150):
            yield b" " * MB

    r = server.http().post("/v1/batches", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").status == "validating"


def test_synchronous_requests_may_be_as_big_as_a_batch_line_and_no_bigger(client: openai.OpenAI) -> None:
    ok = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "y" * (2 * MB)}])
    assert ok.choices[0].message.content
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "y" * (11 * MB)}])
    assert_envelope(ei.value, 413, code="request_too_large")


# -- 2: full disk on upload ----------------------------------------------------------------------------------
def test_a_full_disk_on_upload_is_507_retried_and_leaves_nothing(
    small_disk: Callable[[int], Path], serve: ServeFactory
) -> None:
    srv = serve(data_dir=small_disk(3 * MB))
    with pytest.raises(openai.APIStatusError) as ei:
        srv.client().files.create(file=("big.jsonl", b"x" * (5 * MB)), purpose="batch")
    e = assert_envelope(ei.value, 507, code="insufficient_storage")
    assert "out of disk space" in e["message"] and e["type"] == "server_error"
    assert srv.count("POST", "/v1/files") == 3  # a 5xx: the SDK retried (twice), as it would later
    assert not list((srv.settings.data_dir / "files" / "tmp").iterdir())  # the partial writes are gone
    ok = srv.client().files.create(file=("ok.jsonl", jsonl([req("a")])), purpose="batch")
    assert ok.status == "processed"


# -- 1: full disk during a running batch ---------------------------------------------------------------------
def _fill(folder: Path) -> Path:
    """Fill the file system holding `folder` until a write fails for want of space."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as fh:
        for block in (1 << 20, 1 << 12):
            try:
                while True:
                    fh.write(bytes(block))
            except OSError:
                pass
    return filler


def _slow_batch(srv: Server, n: int) -> tuple[openai.OpenAI, str]:
    client = srv.client()
    f = upload(client, [req(f"r{i}") for i in range(n)])
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 20
    while (cur := client.batches.retrieve(b.id)).request_counts is None or cur.request_counts.completed < 200:
        assert time.monotonic() < deadline, cur
        time.sleep(0.02)
    return client, b.id


def test_a_full_disk_pauses_a_running_batch_which_resumes_when_space_returns(
    small_disk: Callable[[int], Path], serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    disk = small_disk(32 * MB)
    srv = serve(EchoEngine(latency=0.05, max_concurrency=64), data_dir=disk / "data")
    client, bid = _slow_batch(srv, 5_000)
    filler = _fill(disk)
    time.sleep(1.0)
    stalled = client.batches.retrieve(bid).request_counts
    health = srv.http().get("/health")
    assert health.status_code == 503 and health.json()["status"] == "storage_full", health.text
    assert health.json()["storage"]["status"] == "full"
    time.sleep(1.0)
    assert client.batches.retrieve(bid).request_counts == stalled  # waiting, not losing results
    assert client.batches.retrieve(bid).status == "in_progress"
    filler.unlink()  # space comes back: the batch goes on by itself
    done = wait(client, bid, timeout=60)
    assert done.status == "completed" and done.request_counts.completed == 5_000
    ids = [json.loads(x)["custom_id"] for x in client.files.content(done.output_file_id).content.splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(5_000))  # each exactly once
    assert srv.http().get("/health").json()["storage"]["status"] == "ok"
    logged = caplog.text
    assert "disk full" in logged and "disk space is back" in logged


def test_a_batch_that_cannot_store_results_for_too_long_fails_with_a_clear_error(
    small_disk: Callable[[int], Path], serve: ServeFactory
) -> None:
    disk = small_disk(32 * MB)
    srv = serve(
        EchoEngine(latency=0.05, max_concurrency=64),
        data_dir=disk / "data",
        executor=replace(FAST, disk_full_seconds=1.0, disk_retry_max_seconds=0.2),
    )
    client, bid = _slow_batch(srv, 5_000)
    filler = _fill(disk)
    failed = wait(client, bid, timeout=30)
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data
    error = failed.errors.data[0]
    assert error.code == "insufficient_storage" and "disk space" in (error.message or "")
    filler.unlink()
    ok = client.batches.create(input_file_id=upload(client, [req("a")]).id, endpoint=CHAT, completion_window="24h")
    assert wait(client, ok.id).status == "completed"  # the server itself carries on


# -- 8: raw-bytes uploads (Bespoke Curator) ------------------------------------------------------------------
def test_a_raw_bytes_jsonl_upload_runs_as_a_batch_through_the_sdk(client: openai.OpenAI) -> None:
    """Curator 0.1.31 uploads `file=<bytes>`: the SDK names the part `upload`, and every run got a 400."""
    data = jsonl([req("a"), req("b")])
    f = client.files.create(file=data, purpose="batch")
    assert f.filename == "upload" and f.bytes == len(data)
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait(client, b.id)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 2


@pytest.mark.parametrize(
    "name, data",
    [
        ("input.json", b'{"custom_id": "a"}\n'),  # JSONL content, wrong extension: still refused
        ("input.csv", b'{"custom_id": "a"}\n'),
        ("upload", b"id,text\n1,hello\n"),  # no extension, not JSONL
        ("upload", b"[1, 2]\n"),
        ("upload", b"\x89PNG\r\n\x1a\n"),
    ],
)
def test_uploads_that_are_not_jsonl_by_name_or_content_are_refused(
    client: openai.OpenAI, name: str, data: bytes
) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.files.create(file=(name, data), purpose="batch")
    assert_envelope(ei.value, 400, message="Invalid file format for Batch API. Must be .jsonl")


# -- 9: the echo fixture honours max_tokens ------------------------------------------------------------------
@pytest.mark.parametrize("cap", [{"max_tokens": 5}, {"max_completion_tokens": 5}])
def test_echo_answers_are_cut_at_max_tokens_like_a_model(client: openai.OpenAI, cap: dict[str, int]) -> None:
    text = "Tweet: @united thanks for the great flight today, the crew were lovely and the food was fine"
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], **cap)  # type: ignore[call-overload]
    assert r.usage is not None and r.usage.completion_tokens == 5  # was 13-16 with max_tokens 5
    assert r.choices[0].finish_reason == "length" and text.startswith(r.choices[0].message.content or "-")
    whole = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert whole.choices[0].finish_reason == "stop" and whole.choices[0].message.content == "hi"


def test_echo_responses_are_incomplete_at_max_output_tokens(client: openai.OpenAI) -> None:
    # 16 is the least max_output_tokens the Responses API takes (the server checks the official schema)
    words = " ".join(f"word{i}" for i in range(40))
    r = client.responses.create(model="m", input=words, max_output_tokens=16)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.usage is not None and r.usage.output_tokens == 16


# -- 7: another key's input file -----------------------------------------------------------------------------
def test_another_keys_input_file_is_refused_at_create_exactly_like_an_unknown_one(serve: ServeFactory) -> None:
    """A batch on another key's input file was accepted (200) and failed later; it is now a 404 at create, with
    the same answer as an unknown id (status, code, param, message), so a key learns nothing about ids it does
    not own, and no batch is left behind. The owner can still use the file."""
    srv = serve(api_keys=["key-a", "key-b"])
    a, b = srv.client(api_key="key-a"), srv.client(api_key="key-b")
    theirs = upload(a, [req("x")])
    answers = []
    for file_id in (theirs.id, "file-" + "0" * 24):
        with pytest.raises(openai.NotFoundError) as ei:
            b.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        e = assert_envelope(ei.value, 404, param="input_file_id")
        answers.append((e["type"], e["code"], e["message"].replace(file_id, "ID")))
    assert answers[0] == answers[1]
    assert b.batches.list().data == [] and a.batches.list().data == []
    mine = a.batches.create(input_file_id=theirs.id, endpoint=CHAT, completion_window="24h")
    assert wait(a, mine.id).status == "completed"


# -- found by schemathesis (tests/contract/test_schemathesis.py) ----------------------------------------------
def test_a_responses_request_without_input_is_a_400_naming_input(server: Server) -> None:
    """`input` is optional in the Responses schema (stored prompts, previous responses); without it the server
    answered 500. It has neither, so it is a 400 that says what is missing."""
    r = server.http().post("/v1/responses", json={"model": "m"})
    assert r.status_code == 400, r.text
    assert "input" in r.json()["error"]["message"]
