"""Issue 15: hostile bodies, odd uploads and full disks, against the real server on loopback.

Each test is the issue's reproduction, asserting what a client sees (status, envelope, message) and that the
server is still well afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from .conftest import Server
from .test_openai_sdk import CHAT, assert_envelope, req, upload

MB = 1_000_000


# -- 5: JSON body cap ----------------------------------------------------------------------------------------
def test_a_big_json_body_is_413_before_it_is_read_whole(server: Server, client: openai.OpenAI) -> None:
    f = upload(client, [req("a")])
    with pytest.raises(openai.APIStatusError) as ei:
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h",
                              extra_body={"padding": "x" * (2 * MB)})
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
