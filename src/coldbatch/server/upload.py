"""Streaming multipart parsing for `POST /v1/files`: the `file` part goes straight to the blob store.

Starlette's `request.form()` spools the whole upload to a temporary file before the handler sees it,
so a 2 GB body would be written to disk before we could say "too large". Here the body is parsed as
it arrives: small form fields are kept (capped), the file part is written chunk by chunk into the
store's writer, and the upload is aborted the moment it passes the size cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

from coldbatch.errors import ApiError

MAX_FIELD = 4096
HEAD_BYTES = 65_536  #: the start of the file part, kept to tell JSONL content from other bytes


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    head: bytes = b""  #: the file part's first HEAD_BYTES


class _Parts:
    """Callbacks for one multipart body."""

    def __init__(self, sink: IO[bytes], max_bytes: int) -> None:
        self.sink, self.max_bytes = sink, max_bytes
        self.result = Upload()
        self._hname = b""
        self._hval = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._is_file = False
        self._seen_file = False

    def on_part_begin(self) -> None:
        self._headers, self._name, self._value, self._is_file = {}, None, bytearray(), False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hval += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hval
        self._hname, self._hval = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self._seen_file:
                raise ApiError(400, "Only one 'file' part is allowed.", param="file")
            self._is_file = self._seen_file = True
            raw = params.get(b"filename")
            self.result.filename = raw.decode("utf-8", "replace") if raw is not None else "upload"

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.result.size += len(chunk)
            if self.result.size > self.max_bytes:
                raise ApiError(400, "File is too large.", param="file", code="file_too_large")
            if len(self.result.head) < HEAD_BYTES:
                self.result.head += chunk[: HEAD_BYTES - len(self.result.head)]
            self.sink.write(chunk)
        else:
            self._value += chunk
            if len(self._value) > MAX_FIELD:
                raise ApiError(400, f"Form field '{self._name}' is too long.", param=self._name)

    def on_part_end(self) -> None:
        if not self._is_file and self._name:
            self.result.fields[self._name] = self._value.decode("utf-8", "replace")


async def parse_upload(content_type: str, body: AsyncIterator[bytes], sink: IO[bytes], max_bytes: int) -> Upload:
    """Parse a multipart body, writing the `file` part to `sink`. Raises ApiError on malformed input."""
    ctype, params = parse_options_header(content_type.encode("latin-1", "replace"))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(400, "Expected a multipart/form-data body with a 'file' part and a 'purpose' field.")
    parts = _Parts(sink, max_bytes)
    callbacks = {
        name: getattr(parts, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except (ApiError, OSError):
        raise  # OSError: the store's writes (a full disk is the server's 507, not the client's 400)
    except Exception as exc:  # python-multipart raises its own parse errors
        raise ApiError(400, f"Malformed multipart body: {exc}") from exc
    if not parts._seen_file:
        raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    return parts.result
