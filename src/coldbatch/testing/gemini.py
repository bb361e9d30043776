"""A local stand-in for the Gemini API's batch mode: a TEST FIXTURE, never a model.

It follows the documented wire format of the Gemini Developer API (v1beta) as far as coldbatch's Gemini adapter
and the official `google-genai` SDK use it, so the adapter is tested through the SDK, unchanged:

- File API: resumable upload (`POST /upload/v1beta/files` with `X-Goog-Upload-Command: start`, then `upload` /
  `upload, finalize` chunks at the returned `x-goog-upload-url`), `GET/DELETE /v1beta/files/{id}`,
  `GET /v1beta/files` (pages), `GET /v1beta/files/{id}:download?alt=media`.
- Batches are long-running operations: `POST /v1beta/models/{model}:batchGenerateContent` with
  `{"batch": {"displayName", "inputConfig": {"fileName"}}}`; `GET /v1beta/batches/{id}`, `GET /v1beta/batches`
  (`{"operations": [...]}`, newest first), `POST /v1beta/batches/{id}:cancel`, `DELETE /v1beta/batches/{id}`.
  `metadata.state` is BATCH_STATE_PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED | EXPIRED; a succeeded
  batch's `metadata.output.responsesFile` names a JSONL file of `{"key", "response"}` / `{"key", "error"}`.
- The input JSONL's lines are `{"key", "request": GenerateContentRequest}`; a line that is not is a per-request
  error (INVALID_ARGUMENT), as is a request without `contents`.
- Auth: `x-goog-api-key` must equal the stand-in's key (else 401 UNAUTHENTICATED, Google's error envelope);
  an upload session's URL carries its own authority, as Google's does.

Answers are the echo engine's (`engines.echo`): the request is read back as a chat body (systemInstruction,
contents, generationConfig.responseSchema → response_format), so a `--labels` job gets the same label for the
same text as from `coldbatch serve --engine echo` under any other dialect. Knobs for tests: `hold` (seconds a
batch stays RUNNING), `expire` (the first N batches end EXPIRED with no results, as one not done within 48 h
does), `fail_keys` (keys answered with an INVALID_ARGUMENT error), `delay_upload` / `delay_create` (the object
exists before the call is answered: a client killed meanwhile must find it again).
Everything lives in memory: test-sized data only.
`GeminiStandIn(...).serve()` runs it under uvicorn on 127.0.0.1 (`testing.upstream.UpstreamServer`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coldbatch.engines.echo import _answer_text

_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, message: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "status": reason}}, status_code=status)


def _field(obj: dict[str, Any], camel: str) -> Any:
    """A request field by its proto JSON name, which Google's API accepts in camelCase or snake_case alike."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(camel, obj.get(snake))


def chat_body(request: dict[str, Any]) -> dict[str, Any]:
    """A GenerateContentRequest read back as the chat body the echo engine answers."""
    messages: list[dict[str, Any]] = []
    system = request.get("systemInstruction") or {}
    if system.get("parts"):
        messages.append({"role": "system", "content": "".join(p.get("text", "") for p in system["parts"])})
    for c in request.get("contents") or []:
        text = "".join(p.get("text", "") for p in c.get("parts") or [])
        messages.append({"role": "assistant" if c.get("role") == "model" else "user", "content": text})
    body: dict[str, Any] = {"messages": messages}
    schema = (request.get("generationConfig") or {}).get("responseSchema")
    if isinstance(schema, dict):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "r", "schema": _lower(schema)}}
    return body


def _lower(schema: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if k not in ("type", "properties", "items")}
    if isinstance(schema.get("type"), str):
        out["type"] = schema["type"].lower()
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: _lower(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = _lower(schema["items"])
    return out


@dataclass
class GeminiStandIn:
    """The stand-in's state and knobs; `app()` is its Starlette application."""

    api_key: str = "gemini-test-key"
    hold: float = 0.0
    expire: int = 0  #: this many batches (the first ones) end EXPIRED with no results
    delay_upload: float = 0.0  #: seconds between storing an upload and answering its finalize (a crash window)
    delay_create: float = 0.0  #: seconds between creating a batch and answering the call (a crash window)
    fail_keys: frozenset[str] = frozenset()
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    executed: Counter[str] = field(default_factory=Counter)  #: per request key, how often it was answered
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    # -- files --------------------------------------------------------------------------------------------
    def _new_file(self, meta: dict[str, Any], data: bytes, *, generated: bool = False) -> dict[str, Any]:
        fid = f"files/f{next(self._ids):06d}"
        now = time.time()
        f = {
            "name": fid,
            "displayName": _field(meta, "displayName") or "",
            "mimeType": _field(meta, "mimeType") or "jsonl",
            "sizeBytes": str(len(data)),
            "createTime": _now_iso(now),
            "updateTime": _now_iso(now),
            "state": "ACTIVE",
            "source": "GENERATED" if generated else "UPLOADED",
            "_t": now,
        }
        if generated:
            f["downloadUri"] = f"/v1beta/{fid}:download?alt=media"
        self.files[fid] = f
        self.blobs[fid] = data
        return f

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    async def upload_start(self, request: Request) -> Response:
        self.calls["upload"] += 1
        meta = (orjson.loads(await request.body() or b"{}")).get("file") or {}
        uid = f"u{next(self._ids)}"
        self.uploads[uid] = {"meta": meta, "data": bytearray()}
        return JSONResponse(
            {},
            headers={
                "x-goog-upload-url": f"{request.base_url}upload/v1beta/files?upload_id={uid}",
                "x-goog-upload-status": "active",
            },
        )

    async def upload_chunk(self, request: Request) -> Response:
        up = self.uploads.get(request.query_params.get("upload_id", ""))
        if up is None:
            return _error(404, "no such upload session", "NOT_FOUND")
        command = request.headers.get("x-goog-upload-command", "")
        if int(request.headers.get("x-goog-upload-offset", "0")) != len(up["data"]):
            return _error(400, "upload offset does not match what was received", "INVALID_ARGUMENT")
        up["data"] += await request.body()
        if "finalize" not in command:
            return Response(b"", headers={"x-goog-upload-status": "active"})
        del self.uploads[request.query_params["upload_id"]]
        f = self._new_file(up["meta"], bytes(up["data"]))
        await asyncio.sleep(self.delay_upload)
        return JSONResponse({"file": self._public(f)}, headers={"x-goog-upload-status": "final"})

    async def file_get(self, request: Request) -> Response:
        f = self.files.get("files/" + request.path_params["fid"])
        return JSONResponse(self._public(f)) if f else _error(404, "file not found", "NOT_FOUND")

    async def file_delete(self, request: Request) -> Response:
        fid = "files/" + request.path_params["fid"]
        if self.files.pop(fid, None) is None:
            return _error(404, "file not found", "NOT_FOUND")
        self.blobs.pop(fid, None)
        self.calls["file_delete"] += 1
        return JSONResponse({})

    async def file_list(self, request: Request) -> Response:
        files = sorted(self.files.values(), key=lambda f: f["_t"], reverse=True)
        return self._page(request, [self._public(f) for f in files], "files")

    async def file_download(self, request: Request) -> Response:
        fid = "files/" + request.path_params["fid"]
        if fid not in self.blobs:
            return _error(404, "file not found", "NOT_FOUND")
        return Response(self.blobs[fid], media_type="application/octet-stream")

    @staticmethod
    def _page(request: Request, items: list[dict[str, Any]], key: str) -> Response:
        size = int(request.query_params.get("pageSize") or 50)
        start = int(request.query_params.get("pageToken") or 0)
        body: dict[str, Any] = {key: items[start : start + size]}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        return JSONResponse(body)

    # -- batches ------------------------------------------------------------------------------------------
    async def batch_create(self, request: Request) -> Response:
        self.calls["batch_create"] += 1
        model = request.path_params["model"]
        spec = (orjson.loads(await request.body() or b"{}")).get("batch") or {}
        src = _field(_field(spec, "inputConfig") or {}, "fileName")
        if src not in self.files:
            return _error(400, f"input file {src!r} not found", "INVALID_ARGUMENT")
        bid = f"batches/b{next(self._ids):06d}"
        now = time.time()
        self.batches[bid] = {
            "name": bid,
            "model": f"models/{model}",
            "displayName": _field(spec, "displayName") or "",
            "input": src,
            "state": "BATCH_STATE_PENDING",
            "_t": now,
            "createTime": _now_iso(now),
        }
        await asyncio.sleep(self.delay_create)
        return JSONResponse(self._operation(self.batches[bid]))

    def _operation(self, b: dict[str, Any]) -> dict[str, Any]:
        meta = {
            "@type": _BATCH_TYPE,
            **{k: v for k, v in b.items() if not k.startswith("_") and k != "input"},
            "inputConfig": {"fileName": b["input"]},
            "updateTime": _now_iso(time.time()),
        }
        if b.get("_output"):
            meta["output"] = {"responsesFile": b["_output"]}
        done = b["state"] not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
        return {"name": b["name"], "metadata": meta, "done": done}

    def _advance(self, b: dict[str, Any]) -> None:
        """Run a batch when it has been held long enough: answers every line at once, or expires it."""
        if b["state"] == "BATCH_STATE_PENDING":
            b["state"] = "BATCH_STATE_RUNNING"
        if b["state"] != "BATCH_STATE_RUNNING" or time.time() - b["_t"] < self.hold:
            return
        b["endTime"] = _now_iso(time.time())
        if self.expire > 0:
            self.expire -= 1
            b["state"] = "BATCH_STATE_EXPIRED"
            return
        out = bytearray()
        for raw in self.blobs.get(b["input"], b"").splitlines():
            if raw.strip():
                out += orjson.dumps(self._answer(raw)) + b"\n"
        b["_output"] = self._new_file({"displayName": f"{b['name']}-responses"}, bytes(out), generated=True)["name"]
        b["state"] = "BATCH_STATE_SUCCEEDED"

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
            line = orjson.loads(raw)
            key, request = str(line["key"]), line["request"]
            if not isinstance(request, dict) or not request.get("contents"):
                raise ValueError("request.contents is required")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return {"key": None, "error": {"code": 3, "message": f"invalid line: {exc}", "status": "INVALID_ARGUMENT"}}
        if key in self.fail_keys:
            return {
                "key": key,
                "error": {"code": 3, "message": "rejected by the stand-in (fail_keys)", "status": "INVALID_ARGUMENT"},
            }
        self.executed[key] += 1
        body = chat_body(request)
        text = _answer_text(body)
        prompt = sum(len(str(m["content"]).split()) for m in body["messages"])
        return {
            "key": key,
            "response": {
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                "usageMetadata": {
                    "promptTokenCount": prompt,
                    "candidatesTokenCount": len(text.split()),
                    "totalTokenCount": prompt + len(text.split()),
                },
                "modelVersion": "stand-in",
            },
        }

    def _batch(self, request: Request) -> dict[str, Any] | None:
        return self.batches.get("batches/" + request.path_params["bid"])

    async def batch_get(self, request: Request) -> Response:
        b = self._batch(request)
        if b is None:
            return _error(404, "batch not found", "NOT_FOUND")
        self._advance(b)
        return JSONResponse(self._operation(b))

    async def batch_list(self, request: Request) -> Response:
        items = sorted(self.batches.values(), key=lambda b: b["_t"], reverse=True)
        for b in items:
            self._advance(b)
        return self._page(request, [self._operation(b) for b in items], "operations")

    async def batch_cancel(self, request: Request) -> Response:
        b = self._batch(request)
        if b is None:
            return _error(404, "batch not found", "NOT_FOUND")
        self.calls["batch_cancel"] += 1
        if b["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
            b["state"], b["endTime"] = "BATCH_STATE_CANCELLED", _now_iso(time.time())
            return JSONResponse({})
        return _error(400, f"batch is {b['state']}", "FAILED_PRECONDITION")

    async def batch_delete(self, request: Request) -> Response:
        if self.batches.pop("batches/" + request.path_params["bid"], None) is None:
            return _error(404, "batch not found", "NOT_FOUND")
        return JSONResponse({})

    # -- the app ------------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        stand_in = self

        class _Auth:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                headers = dict(scope.get("headers") or [])
                session = b"upload_id=" in scope.get("query_string", b"")  # the upload URL is the credential
                if (
                    scope["type"] == "http"
                    and not session
                    and headers.get(b"x-goog-api-key", b"").decode() != stand_in.api_key
                ):
                    await _error(401, "API key not valid", "UNAUTHENTICATED")(scope, receive, send)
                    return
                await self.inner(scope, receive, send)

        routes = [
            Route("/upload/v1beta/files", self._upload, methods=["POST"]),
            Route("/v1beta/files/{fid}:download", self.file_download, methods=["GET"]),
            Route("/v1beta/files/{fid}", self.file_get, methods=["GET"]),
            Route("/v1beta/files/{fid}", self.file_delete, methods=["DELETE"]),
            Route("/v1beta/files", self.file_list, methods=["GET"]),
            Route("/v1beta/models/{model}:batchGenerateContent", self.batch_create, methods=["POST"]),
            Route("/v1beta/batches/{bid}:cancel", self.batch_cancel, methods=["POST"]),
            Route("/v1beta/batches/{bid}", self.batch_get, methods=["GET"]),
            Route("/v1beta/batches/{bid}", self.batch_delete, methods=["DELETE"]),
            Route("/v1beta/batches", self.batch_list, methods=["GET"]),
        ]
        app = Starlette(routes=routes)
        return _Auth(app)  # type: ignore[return-value]

    async def _upload(self, request: Request) -> Response:
        if "upload_id" in request.query_params:
            return await self.upload_chunk(request)
        return await self.upload_start(request)

    def serve(self) -> Any:
        """This stand-in under uvicorn on 127.0.0.1 (a free port): `with stand_in.serve() as srv: srv.url`."""
        from coldbatch.testing.upstream import UpstreamServer

        return UpstreamServer(self.app())
