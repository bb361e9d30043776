"""The Batch API's line types, typed once for both halves: request lines, output/error lines, responses.

A batch input file is JSONL of `RequestLine`s; its output and error files are JSONL of `OutputLine`s (the
same shape in both: a `response` with status and body, or an `error`). The server's executor writes output
lines and reads request lines, the runner reads output lines and re-sends request lines, the validator and
the estimator read request lines: before this module each of them parsed and built these dicts by hand
(seven places), each with its own idea of which keys are optional.

Parsing here trusts the shape only as far as the caller may: `RequestLine.parse` is for lines that passed
`core.validate` (a prepared shard, an accepted upload) and raises `LineTooBroken` naming the missing key
otherwise; `OutputLine.parse` accepts what any provider writes (missing keys become None). orjson does
the work; the line objects are slotted and not frozen (a frozen dataclass's __init__ costs 50 % more per
line), so a pass over millions of lines costs about what the bare dicts cost (bench/protocol_lines.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from coldbatch.errors import ColdbatchError

#: the keys of an output/error line, in the order OpenAI writes them
OUTPUT_KEYS: Final = ("id", "custom_id", "response", "error")


class LineTooBroken(ColdbatchError):
    """A line that should have been validated lacks a key every request line has."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class Result:
    """One request's outcome: the HTTP status and JSON body the sync endpoint would have returned.

    What an engine answers, what the hot-path client returns, and what an output line carries."""

    status_code: int
    body: dict[str, Any]
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


def error_result(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> Result:
    """A failed request as OpenAI spells one: `{"error": {message, type, param, code}}`."""
    return Result(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs +50 % per line (bench/protocol_lines.py)
class RequestLine:
    """One request of a batch input file: `{"custom_id", "method", "url", "body"}`."""

    custom_id: str
    url: str
    body: dict[str, Any]
    method: str = "POST"

    @classmethod
    def parse(cls, raw: bytes | str) -> RequestLine:
        """A validated request line. Raises `LineTooBroken` for JSON that is not one (a bug upstream)."""
        obj = orjson.loads(raw)
        try:
            return cls(obj["custom_id"], obj.get("url", ""), obj["body"], obj.get("method", "POST"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise LineTooBroken(f"not a request line (no {exc}): {raw[:200]!r}") from None

    def encode(self) -> bytes:
        """The line's bytes, without the newline (keys in OpenAI's order)."""
        return orjson.dumps({"custom_id": self.custom_id, "method": self.method, "url": self.url, "body": self.body})


def custom_id_of(raw: bytes | str) -> str:
    """Only the custom_id of a request or output line (a scan that needs nothing else)."""
    return str(orjson.loads(raw)["custom_id"])


@dataclass(slots=True)  # not frozen, for the same reason as RequestLine; treat both as values
class OutputLine:
    """One line of a batch output or error file.

    `status_code`/`body` are the response (None when the request never ran); `error` is the line-level
    error object (`{"code", "message"}`) of a request that never ran (expired, cancelled)."""

    custom_id: str
    status_code: int | None = None
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    id: str | None = None
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer: the only kind of line that is a success, in whichever file it was found."""
        return self.status_code is not None and 200 <= self.status_code < 300

    @classmethod
    def parse(cls, raw: bytes | str) -> OutputLine:
        """Any provider's output/error line; keys it lacks become None (the runner classifies them)."""
        return cls.from_obj(orjson.loads(raw))

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> OutputLine:
        """The same from an already decoded line."""
        resp = obj.get("response") or None
        if resp is None:
            err = obj.get("error")
            return cls(obj["custom_id"], error=err if isinstance(err, dict) else None, id=obj.get("id"))
        status = resp.get("status_code", 200)  # a response without a status is an answer (as the runner always read it)
        body = resp.get("body")
        return cls(
            obj["custom_id"],
            None if status is None else int(status),
            body if isinstance(body, dict) else None,
            obj.get("error"),
            obj.get("id"),
            resp.get("request_id"),
        )

    def encode(self) -> bytes:
        """The line's bytes, without the newline."""
        if self.status_code is None:
            return encode_never_ran(self.id or "", self.custom_id, self.error or {})
        return encode_response(self.id or "", self.custom_id, self.request_id or "", self.status_code, self.body or {})


def encode_response(line_id: str, custom_id: str, request_id: str, status_code: int, body: dict[str, Any]) -> bytes:
    """An output/error line for a request that ran (2xx goes to the output file, the rest to the error file).

    A plain function, not `OutputLine(...).encode()`: the executor writes one per request of every batch."""
    return orjson.dumps(
        {
            "id": line_id,
            "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": request_id, "body": body},
            "error": None,
        }
    )


def encode_never_ran(line_id: str, custom_id: str, error: dict[str, Any]) -> bytes:
    """An error-file line for a request that never ran (`batch_expired`, `batch_cancelled`)."""
    return orjson.dumps({"id": line_id, "custom_id": custom_id, "response": None, "error": error})
