"""The send plan's request line for a question: the row's bytes under the question's key, byte-identical to
re-encoding the parsed request for a line coldbatch prepared, and re-encoded for any other layout."""

from __future__ import annotations

import orjson

from coldbatch.runner.plan import _send_line

KEY = "k-0123456789abcdef0123456789abcdef"


def _pending(line: bytes) -> tuple:
    req = orjson.loads(line)
    return ("f:1", str(req.get("custom_id")), "gpt-4o-mini", 0, [], KEY, 5, req, line)


def test_prepared_line_keeps_its_bytes_and_equals_reencoding() -> None:
    req = {
        "custom_id": "rev-7",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": 'say "custom_id":"rev-7" é'}], "x": 0.0},
    }
    line = orjson.dumps(req)
    sent = _send_line(_pending(line), KEY)
    assert sent == orjson.dumps({**req, "custom_id": KEY})


def test_other_layouts_are_reencoded_with_the_key() -> None:
    for line in (
        b'{ "custom_id": "a", "body": {"model": "m"}}',
        b'{"body":{"model":"m","custom_id":"a"},"custom_id":"a"}',
        b'{"custom_id":7,"body":{"model":"m"}}',
    ):
        sent = _send_line(_pending(line), KEY)
        want = orjson.loads(line)
        want["custom_id"] = KEY
        assert orjson.loads(sent) == want
        assert sent.count(KEY.encode()) == 1
