"""The provider's rules for a batch input file, in one place (spec §5).

`coldbatch validate`, `coldbatch prepare` (self-check) and the server's `validating` step all use this
module, so a file that passes here is a file the server accepts and vice versa. It is pure: callers
feed raw lines (bytes, without the trailing newline) and read a `Report`. Every broken rule becomes a
`LineError` with OpenAI's error code where one exists (codes marked *coldbatch* are our own):

| code                         | scope | param                       |
|------------------------------|-------|-----------------------------|
| invalid_json_line            | line  | -                           |
| missing_required_parameter   | line  | custom_id/method/url/body   |
| invalid_type                 | line  | the field                   |
| invalid_request              | line  | method, body.model, body.messages, body.input, body.prompt |
| invalid_url                  | line  | url                         |
| model_not_found              | line  | body.model                  |
| mismatched_model             | line  | body.model                  |
| streaming_unsupported        | line  | body.stream                 |
| duplicate_custom_id          | line  | custom_id                   |
| invalid_value                | line  | body.<path>: the endpoint's request schema (`core/bodies.py`) |
| integer_below_min_value      | line  | body.<path>; also `integer_above_max_value`, `decimal_…` |
| decimal_above_max_value      | line  | body.<path> |
| invalid_custom_id            | line  | custom_id (Anthropic lines: 1-64 of `[A-Za-z0-9_-]`) |
| line_too_large *coldbatch*   | line  | -                           |
| empty_file                   | file  | -                           |
| too_many_tasks               | file  | - (or body.input for embeddings) |
| file_too_large *coldbatch*   | file  | -                           |

Bodies are also checked against the endpoint's request schema generated from the official SDKs
(`core/bodies.py`): roles, field types, ranges, required fields, with a JSON path as param. A file of
Anthropic Message Batch lines (`{"custom_id", "params"}`) is recognized by its first request and checked
with Anthropic's rules (custom_id alphabet, 100,000 requests, 256 MB, the Messages schema on `params`).

Random bytes never raise: anything that is not the expected shape is reported.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from coldbatch.core.bodies import check_body
from coldbatch.errors import LineError
from coldbatch.protocol import limits as L

_REQUIRED_BODY_FIELD = {
    L.CHAT: "messages",
    L.EMBEDDINGS: "input",
    L.COMPLETIONS: "prompt",
    L.RESPONSES: "input",
    L.MODERATIONS: "input",
}
_MODEL_REQUIRED = {L.CHAT, L.EMBEDDINGS, L.COMPLETIONS, L.RESPONSES}
_JSON_TYPE = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
_ANTHROPIC_ID = re.compile(L.ANTHROPIC_CUSTOM_ID)


def _type_name(value: object) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


@dataclass(slots=True)
class Report:
    """What one file looked like, and everything wrong with it."""

    file: str | None
    errors: list[LineError] = field(default_factory=list)
    total_errors: int = 0
    requests: int = 0
    bytes: int = 0
    endpoint: str | None = None
    model: str | None = None

    @property
    def ok(self) -> bool:
        return self.total_errors == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "ok": self.ok,
            "requests": self.requests,
            "bytes": self.bytes,
            "endpoint": self.endpoint,
            "model": self.model,
            "total_errors": self.total_errors,
            "errors": [e.to_json() for e in self.errors],
        }


class FileValidator:
    """Feed one file's lines in order; `finish()` returns the `Report`.

    endpoint: the batch's endpoint; when None (linting a loose file) the first line's `url` sets it.
    models: the models the executor serves; None accepts any model name.
    check_bodies: False for the server's own file of an Anthropic Message Batch, whose requests may name
    several models and whose invalid params become errored results, as at Anthropic.
    """

    def __init__(
        self,
        *,
        file: str | None = None,
        endpoint: str | None = None,
        models: Collection[str] | None = None,
        limits: L.Limits | None = None,
        max_errors: int = 1000,
        check_bodies: bool = True,
    ) -> None:
        self.report = Report(file=file, endpoint=endpoint)
        self._fixed_endpoint = endpoint is not None
        self._models = models
        self._limits = limits or L.Limits()
        self._limits_given = limits is not None
        self._check_bodies = check_bodies
        self._max_errors = max_errors
        self._seen: dict[str, int] = {}
        self._embedding_inputs = 0
        self._line = 0
        self._nonblank = 0

    def _error(self, line: int | None, code: str, message: str, param: str | None = None) -> None:
        self.report.total_errors += 1
        if len(self.report.errors) < self._max_errors:
            self.report.errors.append(LineError(line, code, message, param, self.report.file))

    def feed_many(self, lines: Iterable[bytes]) -> FileValidator:
        for raw in lines:
            self.feed(raw)
        return self

    def feed(self, raw: bytes) -> None:
        """Check one physical line (no trailing newline)."""
        self._line += 1
        self.report.bytes += len(raw) + 1
        if not raw.strip():
            return  # blank lines are tolerated, as by the provider
        self._nonblank += 1
        lineno = self._line
        if len(raw) > self._limits.max_line_bytes:
            self._error(
                lineno,
                "line_too_large",
                f"This line is {len(raw):,} bytes; the limit is {self._limits.max_line_bytes:,}.",
            )
            return
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            detail = "it is not valid UTF-8" if "utf-8" in str(exc).lower() else str(exc)
            self._error(lineno, "invalid_json_line", f"This line is not parseable as valid JSON ({detail}).")
            return
        if not isinstance(obj, dict):
            self._error(lineno, "invalid_json_line", f"This line must be a JSON object, not {_type_name(obj)}.")
            return
        self.report.requests += 1
        if "params" in obj and "url" not in obj and "body" not in obj and not self._fixed_endpoint:
            self._check_anthropic(lineno, obj)
        else:
            self._check_request(lineno, obj)

    def _check_anthropic(self, lineno: int, obj: dict[str, Any]) -> None:
        """One line of an Anthropic Message Batch file: `{"custom_id", "params"}` (the inline request shape)."""
        if self.report.endpoint is None:
            self.report.endpoint = L.MESSAGES
            if not self._limits_given:
                self._limits = L.Limits(max_requests=L.ANTHROPIC_MAX_REQUESTS, max_bytes=L.ANTHROPIC_MAX_BYTES)
        cid = obj.get("custom_id")
        if isinstance(cid, str) and not _ANTHROPIC_ID.match(cid):
            self._error(
                lineno,
                "invalid_custom_id",
                f"Invalid 'custom_id' {cid[:80]!r}: Anthropic needs 1 to 64 "
                "characters of letters, digits, '_' and '-'.",
                "custom_id",
            )
        else:
            self._check_custom_id(lineno, cid)
        params = obj["params"]
        if not isinstance(params, dict):
            self._error(
                lineno,
                "invalid_type",
                f"Invalid type for 'params': expected an object, but got {_type_name(params)}.",
                "params",
            )
            return
        for param, code, message in check_body(L.MESSAGES, params, "params"):
            self._error(lineno, code, message, param)
        if params.get("stream") is True:
            self._error(
                lineno, "streaming_unsupported", "Streaming is not supported in the Batch API.", "params.stream"
            )

    def _check_request(self, lineno: int, obj: dict[str, Any]) -> None:
        missing = [k for k in ("custom_id", "method", "url", "body") if k not in obj]
        for key in missing:
            self._error(lineno, "missing_required_parameter", f"Missing required parameter: '{key}'.", key)
        if "custom_id" in obj:
            self._check_custom_id(lineno, obj["custom_id"])
        method = obj.get("method")
        if "method" in obj and method != "POST":
            self._error(
                lineno, "invalid_request", f"Invalid method {method!r}: the Batch API only accepts 'POST'.", "method"
            )
        url = obj.get("url")
        if "url" in obj:
            self._check_url(lineno, url)
        if "body" in obj:
            body = obj["body"]
            if isinstance(body, dict):
                # A line whose url is not the batch's endpoint is reported once, as invalid_url (as OpenAI
                # does); its body is not checked against either shape.
                if not (self._fixed_endpoint and url != self.report.endpoint):
                    self._check_body(lineno, url if isinstance(url, str) else self.report.endpoint, body)
            else:
                self._error(
                    lineno,
                    "invalid_type",
                    f"Invalid type for 'body': expected an object, but got {_type_name(body)}.",
                    "body",
                )

    def _check_custom_id(self, lineno: int, cid: object) -> None:
        if not isinstance(cid, str) or not cid:
            self._error(
                lineno,
                "invalid_type",
                f"Invalid 'custom_id': expected a non-empty string, but got {_type_name(cid)}.",
                "custom_id",
            )
            return
        first = self._seen.setdefault(cid, lineno)
        if first != lineno:
            self._error(
                lineno,
                "duplicate_custom_id",
                f"The custom_id {cid!r} is a duplicate of the request on line {first}.",
                "custom_id",
            )

    def _check_url(self, lineno: int, url: object) -> None:
        internal = url == L.MESSAGES and self.report.endpoint == L.MESSAGES and self._fixed_endpoint
        if not internal and (not isinstance(url, str) or url not in L.ENDPOINTS):
            self._error(
                lineno,
                "invalid_url",
                f"The URL {url!r} is not a Batch API endpoint; supported: {', '.join(L.ENDPOINTS)}.",
                "url",
            )
        elif self.report.endpoint is None:
            self.report.endpoint = str(url)
        elif url != self.report.endpoint:
            why = "the batch endpoint" if self._fixed_endpoint else f"the file's endpoint {self.report.endpoint!r}"
            self._error(lineno, "invalid_url", f"The URL provided for this request does not match {why}.", "url")

    def _check_body(self, lineno: int, url: str | None, body: dict[str, Any]) -> None:
        if not self._check_bodies:
            return
        before = self.report.total_errors
        self._check_model(lineno, url, body)
        needed = _REQUIRED_BODY_FIELD.get(url or "")
        if needed:
            value = body.get(needed)
            if value is None or value == [] or value == "":  # an empty string is as good as missing
                self._error(
                    lineno, "invalid_request", f"{needed.capitalize()} parameter is required.", f"body.{needed}"
                )
            elif needed == "messages":
                self._check_messages(lineno, value)
            elif url == L.EMBEDDINGS:
                self._count_embedding_inputs(lineno, value)
        if body.get("stream") is True:
            self._error(lineno, "streaming_unsupported", "Streaming is not supported in the Batch API.", "body.stream")
        if self.report.total_errors == before and url:  # (the same mistake is not reported twice)
            for param, code, message in check_body(url, body):
                self._error(lineno, code, message, param)

    def _check_model(self, lineno: int, url: str | None, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            if url in _MODEL_REQUIRED:
                self._error(lineno, "invalid_request", "Model parameter is required.", "body.model")
            return
        if not isinstance(model, str) or not model:
            self._error(
                lineno,
                "invalid_type",
                f"Invalid type for 'body.model': expected a string, but got {_type_name(model)}.",
                "body.model",
            )
            return
        if self._models is not None and model not in self._models:
            self._error(
                lineno,
                "model_not_found",
                f"The provided model {model!r} is not supported by the Batch API.",
                "body.model",
            )
        if self.report.model is None:
            self.report.model = model
        elif model != self.report.model:
            self._error(
                lineno,
                "mismatched_model",
                f"The model {model!r} differs from {self.report.model!r} used earlier in this file; "
                "each input file can only include requests to a single model.",
                "body.model",
            )

    def _check_messages(self, lineno: int, messages: object) -> None:
        if not isinstance(messages, list):
            self._error(
                lineno,
                "invalid_type",
                f"Invalid type for 'body.messages': expected an array, but got {_type_name(messages)}.",
                "body.messages",
            )
            return
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                self._error(
                    lineno,
                    "invalid_request",
                    f"Each message needs a string 'role'; message {i} has none.",
                    f"body.messages[{i}]",
                )
                return
            content = msg.get("content")
            if content is None and msg.get("role") != "assistant":
                self._error(lineno, "invalid_request", f"Message {i} has no 'content'.", f"body.messages[{i}].content")
                return
            if content is not None and not isinstance(content, str | list):
                self._error(
                    lineno,
                    "invalid_type",
                    f"Invalid type for 'body.messages[{i}].content': expected a string or an array, "
                    f"but got {_type_name(content)}.",
                    f"body.messages[{i}].content",
                )
                return

    def _count_embedding_inputs(self, lineno: int, value: object) -> None:
        if isinstance(value, str):
            self._embedding_inputs += 1
        elif isinstance(value, list):
            ints = value and all(isinstance(v, int) for v in value)
            self._embedding_inputs += 1 if ints else len(value)
        else:
            self._error(
                lineno,
                "invalid_type",
                f"Invalid type for 'body.input': expected a string or an array, but got {_type_name(value)}.",
                "body.input",
            )

    def custom_ids(self) -> list[str]:
        """The custom_ids seen so far: what a caller validating one file in parts compares across parts."""
        return list(self._seen)

    def finish(self, size: int | None = None) -> Report:
        """Apply the whole-file rules and return the report.

        size: the file's exact size in bytes, when the caller knows it (a file on disk, an upload).
        Without it the size is counted from the lines fed, each with one `\\n`, as prepare writes them.
        """
        lim = self._limits
        if size is not None:
            self.report.bytes = size
        if self._nonblank == 0:
            self._error(
                None,
                "empty_file",
                "The input file is empty. Please ensure that the batch contains at least one request.",
            )
        if self.report.requests > lim.max_requests:
            self._error(
                None,
                "too_many_tasks",
                f"The file has {self.report.requests:,} requests; the limit is {lim.max_requests:,}.",
            )
        if self._embedding_inputs > lim.max_embedding_inputs:
            self._error(
                None,
                "too_many_tasks",
                f"The file has {self._embedding_inputs:,} embedding inputs; the limit is {lim.max_embedding_inputs:,}.",
                "body.input",
            )
        if self.report.bytes > lim.max_bytes:
            self._error(
                None, "file_too_large", f"The file is {self.report.bytes:,} bytes; the limit is {lim.max_bytes:,}."
            )
        return self.report


def split_lines(data: bytes) -> list[bytes]:
    """Split a whole file's bytes into physical lines (`\\n`, tolerating `\\r\\n`)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
