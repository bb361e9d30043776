"""HTTP handlers for /v1/files, /v1/batches and the synchronous endpoints. Each is a few lines: check
the caller, check the input, call the store or the engine, render."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any
from urllib.parse import quote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from coldbatch.core.status import TERMINAL
from coldbatch.core.status import BatchStatus as S
from coldbatch.errors import ApiError, not_found
from coldbatch.protocol import batches as B
from coldbatch.protocol import limits as L
from coldbatch.server.app_types import Services
from coldbatch.server.objects import batch_object, file_object
from coldbatch.server.openapi import openapi
from coldbatch.server.scheduler import HOT
from coldbatch.server.upload import HEAD_BYTES, parse_upload

#: JSON body caps (ours; OpenAI answers 413 too): a synchronous request may be as big as one batch line,
#: any other body (create batch, ...) is a few hundred bytes of parameters and metadata
MAX_JSON_BYTES = 1_000_000
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_BAD_NAME = re.compile(r"[/\\\x00-\x1f]|^\.\.?$")


def services(request: Request) -> Services:
    return request.state.services  # type: ignore[no-any-return]


def caller(request: Request) -> str:
    """The owner id of the calling key ("local" when the server has no keys)."""
    owner = owner_of(services(request), request.headers.get("authorization", ""), request.headers.get("x-api-key", ""))
    if owner is None:
        raise ApiError(401, "Incorrect API key provided.", type_="invalid_request_error", code="invalid_api_key")
    return owner


def owner_of(svc: Services, authorization: str, api_key: str) -> str | None:
    """The owner of the key in these headers; "local" when the server has no keys; None for a bad key."""
    if not svc.owners:
        return "local"
    # `x-api-key` is how Anthropic's API (and older anthropic SDKs) send the key; the same keys serve both
    key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else api_key.strip()
    return svc.owners.get(hashlib.sha256(key.encode()).hexdigest()) if key else None


async def json_body(request: Request, limit: int = MAX_JSON_BYTES) -> Any:
    """The parsed JSON body; 413 as soon as it is known to pass `limit` bytes, so a 150 MB body is never
    held (it grew the server by ~290 MB per request)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}") from exc


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is too large: at most {limit:,} bytes are accepted here.",
        code="request_too_large",
        should_retry=False,
    )


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise ApiError(
            400, f"Invalid '{name}': must be an integer between {lo} and {hi}.", param=name, code="invalid_value"
        )
    return value


# -- files ---------------------------------------------------------------------------------------------------
async def create_file(request: Request) -> Response:
    svc, owner = services(request), caller(request)
    file_id = B.new_id("file-")
    with svc.blobs.writer(file_id) as sink:
        up = await parse_upload(
            request.headers.get("content-type", ""), request.stream(), sink, svc.settings.max_upload_bytes
        )
        purpose = up.fields.get("purpose")
        if not purpose:
            raise ApiError(
                400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose not in PURPOSES:
            raise ApiError(
                400,
                f"Invalid value: '{purpose}'. Supported values are: {', '.join(PURPOSES)}.",
                param="purpose",
                code="invalid_value",
            )
        name = up.filename or "upload"
        if _BAD_NAME.search(name) or len(name) > 255:
            raise ApiError(
                400, "Invalid filename: it must be a plain file name (no path, no control characters).", param="file"
            )
        if purpose == "batch" and not name.lower().endswith(".jsonl") and not _jsonl_without_extension(name, up.head):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        now = int(time.time())
        ttl = B.FILE_TTL if purpose == "batch" else None
        if "expires_after[seconds]" in up.fields or "expires_after[anchor]" in up.fields:
            if up.fields.get("expires_after[anchor]") != "created_at":
                raise ApiError(
                    400,
                    "Invalid 'expires_after[anchor]': must be 'created_at'.",
                    param="expires_after.anchor",
                    code="invalid_value",
                )
            ttl = B.check_ttl(up.fields.get("expires_after[seconds]"), "expires_after.seconds")
    row = {
        "id": file_id,
        "owner": owner,
        "filename": name,
        "purpose": purpose,
        "bytes": up.size,
        "created_at": now,
        "expires_at": now + ttl if ttl else None,
    }
    svc.store.create_file(row)
    return JSONResponse(file_object({**row, "status": "processed"}))


def _jsonl_without_extension(name: str, head: bytes) -> bool:
    """A name with no extension at all (raw bytes reach us as `upload`: the SDK names them so) whose content
    starts as JSONL: its first line is a JSON object (or, longer than what was kept, starts like one). OpenAI
    accepts these, and clients such as Bespoke Curator send them; a wrong extension is still refused."""
    if "." in name:
        return False
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)
    if not first[0].startswith(b"{"):
        return False
    if len(first) == 1 and len(head) >= HEAD_BYTES:
        return True  # a first line longer than the head: validation at batch creation reads it whole
    try:
        return isinstance(orjson.loads(first[0]), dict)
    except orjson.JSONDecodeError:
        return False


async def list_files(request: Request) -> Response:
    svc, owner = services(request), caller(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "Invalid 'order': must be 'asc' or 'desc'.", param="order", code="invalid_value")
    limit = _int_param(request, "limit", 10_000, 1, 10_000)
    rows, more = svc.store.list_files(
        owner,
        purpose=request.query_params.get("purpose"),
        after=request.query_params.get("after"),
        limit=limit,
        order=order,
    )
    return JSONResponse(B.list_page([file_object(r) for r in rows], more))


def _file(request: Request) -> dict[str, Any]:
    svc, owner = services(request), caller(request)
    fid = request.path_params["file_id"]
    row = svc.store.get_file(fid, owner)
    if row is None:
        raise not_found("file", fid)
    return row


async def retrieve_file(request: Request) -> Response:
    return JSONResponse(file_object(_file(request)))


class _BlobResponse(FileResponse):
    """A stored file, sent in 1 MiB chunks: each chunk waits for a turn of the event loop, which runs batch
    work between turns, so starlette's 64 KiB chunks made a 30 MB result file take ~30 s under load."""

    chunk_size = 1 << 20


def send_file(svc: Services, row: dict[str, Any]) -> Response:
    """A stored file's bytes as an attachment (the API's and the dashboard's downloads); from a remote store
    (S3) streamed through in 1 MiB blocks, never whole in memory."""
    if not hasattr(svc.blobs, "path"):
        quoted = quote(row["filename"])
        disposition = (
            f'attachment; filename="{row["filename"]}"'
            if quoted == row["filename"]
            else f"attachment; filename*=utf-8''{quoted}"
        )
        return StreamingResponse(
            svc.blobs.iter_chunks(row["id"]),
            media_type="application/octet-stream",
            headers={"content-disposition": disposition, "content-length": str(row["bytes"])},
        )
    return _BlobResponse(
        svc.blobs.local_path(row["id"]),
        media_type="application/octet-stream",
        filename=row["filename"],
        content_disposition_type="attachment",
    )


async def file_content(request: Request) -> Response:
    return send_file(services(request), _file(request))


async def delete_file(request: Request) -> Response:
    row = _file(request)
    svc = services(request)
    svc.store.delete_file(row["id"], row["owner"])
    if all(b["input_file_id"] != row["id"] for b in svc.store.unfinished_batches()):
        svc.blobs.delete(row["id"])  # else a running batch still reads it; it goes with the next restart
    return JSONResponse({"id": row["id"], "object": "file", "deleted": True})


# -- batches -------------------------------------------------------------------------------------------------
async def create_batch(request: Request) -> Response:
    svc, owner = services(request), caller(request)
    params = B.check_create_batch(await json_body(request), allow_short_windows=svc.settings.allow_short_windows)
    f = svc.store.get_file(params["input_file_id"], owner)
    if f is None:  # unknown, deleted, or another key's: one answer, so a key learns nothing about ids it does not own
        raise ApiError(404, f"No file found with id '{params['input_file_id']}'.", param="input_file_id", code=None)
    if f["purpose"] != "batch":
        raise ApiError(
            400,
            f"File {f['id']} has purpose '{f['purpose']}'; a batch needs purpose 'batch'.",
            param="input_file_id",
            code="invalid_value",
        )
    now = int(time.time())
    row = {
        "id": B.new_id("batch_"),
        "owner": owner,
        "endpoint": params["endpoint"],
        "model": None,
        "input_file_id": params["input_file_id"],
        "completion_window": params["completion_window"],
        "status": S.VALIDATING.value,
        "created_at": now,
        "expires_at": now + params["window_seconds"],
        "metadata": params["metadata"],
        "output_ttl": params.get("output_ttl"),
    }
    svc.store.create_batch(row)
    svc.executor.notify()
    return JSONResponse(batch_object(stored_batch(svc, row["id"])))


def stored_batch(svc: Services, batch_id: str, owner: str | None = None) -> dict[str, Any]:
    """The batch row, or 404 (also for another owner's batch)."""
    row = svc.store.get_batch(batch_id, owner)
    if row is None:
        raise not_found("batch", batch_id)
    return row


async def retrieve_batch(request: Request) -> Response:
    svc, owner = services(request), caller(request)
    return JSONResponse(batch_object(stored_batch(svc, request.path_params["batch_id"], owner)))


async def cancel_batch(request: Request) -> Response:
    svc, owner = services(request), caller(request)
    return JSONResponse(batch_object(cancel(svc, request.path_params["batch_id"], owner)))


def cancel(svc: Services, batch_id: str, owner: str) -> dict[str, Any]:
    """Cancel one of `owner`'s batches (the API's and the dashboard's cancel); returns the stored row.

    Raises:
        ApiError: 404 for a batch the owner does not have, 409 once it is finalizing or terminal.
    """
    row = stored_batch(svc, batch_id, owner)
    status = S(row["status"])
    if status in (S.CANCELLING, S.CANCELLED):
        return row
    if status in TERMINAL or status == S.FINALIZING:
        raise ApiError(409, f"Cannot cancel a batch with status '{status.value}'.", should_retry=False)
    if not svc.store.transition(row["id"], S.CANCELLING, int(time.time())):
        raise ApiError(409, "The batch changed status meanwhile; retrieve it and try again.", should_retry=False)
    svc.executor.notify(row["id"])
    return stored_batch(svc, row["id"])


async def list_batches(request: Request) -> Response:
    svc, owner = services(request), caller(request)
    limit = _int_param(request, "limit", 20, 1, 100)
    rows, more = svc.store.list_batches(owner, after=request.query_params.get("after"), limit=limit)
    return JSONResponse(B.list_page([batch_object(r) for r in rows], more))


# -- synchronous endpoints (the hot path) ------------------------------------------------------------------
async def sync_endpoint(request: Request) -> Response:
    svc = services(request)
    caller(request)
    endpoint = request.url.path
    if endpoint not in svc.engine.info.endpoints:
        raise ApiError(404, f"This server's engine ({svc.engine.info.name}) does not serve {endpoint}.")
    body = await json_body(request, L.MAX_LINE_BYTES)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    if body.get("stream"):
        raise ApiError(400, "Streaming is not supported by this server.", param="stream", code="invalid_value")
    _check_model(svc.engine.info.models, body.get("model"))
    started = time.perf_counter()
    async with svc.slots.slot(HOT):
        result = await svc.engine.complete(endpoint, body)
    svc.metrics.sync_request(endpoint, body.get("model"), result, time.perf_counter() - started)
    return JSONResponse(result.body, status_code=result.status_code)


def _check_model(models: frozenset[str] | None, model: object) -> None:
    """The sync endpoints accept the models the batch validation accepts (one rule for both paths): an engine
    that serves named models refuses other names, as OpenAI does, naming the ones it serves."""
    if models is not None and isinstance(model, str) and model not in models:
        raise ApiError(
            404,
            f"The model {model!r} is not served here; this server serves: {', '.join(sorted(models))}.",
            param="model",
            code="model_not_found",
        )


async def list_models(request: Request) -> Response:
    """OpenAI's model list, plus a `coldbatch` object (engine, endpoints served, whether any model name is
    accepted) that `coldbatch run` reads to refuse a job this server cannot serve before sending anything."""
    svc = services(request)
    caller(request)
    info = svc.engine.info
    names = sorted(info.models or [info.name])
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "coldbatch"} for n in names],
            "coldbatch": {"engine": info.name, "endpoints": sorted(info.endpoints), "any_model": info.models is None},
        }
    )


async def health(request: Request) -> Response:
    """200 while the engine can answer and the disk takes writes; 503 when every engine worker was given up
    (it kept crashing) or the disk is full (batches wait, uploads are refused)."""
    svc = services(request)
    engine = svc.engine
    info = engine.info
    body: dict[str, Any] = {"status": "ok", "engine": info.name, "fixture": info.fixture}
    workers = getattr(engine, "health", None)
    if workers is not None:
        body["workers"] = workers()
        body["status"] = body["workers"]["status"]
    body["storage"] = svc.executor.storage()
    if body["storage"]["status"] == "full" and body["status"] == "ok":
        body["status"] = "storage_full"
    return JSONResponse(body, status_code=503 if body["status"] in ("unavailable", "storage_full") else 200)


async def metrics(request: Request) -> Response:
    """Prometheus text format; needs an API key when the server has keys (the figures cover every key)."""
    svc = services(request)
    caller(request)
    body = await asyncio.to_thread(svc.metrics.exposition)  # reads the store: not on the event loop
    return Response(body, media_type=CONTENT_TYPE_LATEST)


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/v1/files", create_file, ["POST"]),
    ("/v1/files", list_files, ["GET"]),
    ("/v1/files/{file_id}", retrieve_file, ["GET"]),
    ("/v1/files/{file_id}", delete_file, ["DELETE"]),
    ("/v1/files/{file_id}/content", file_content, ["GET"]),
    ("/v1/batches", create_batch, ["POST"]),
    ("/v1/batches", list_batches, ["GET"]),
    ("/v1/batches/{batch_id}", retrieve_batch, ["GET"]),
    ("/v1/batches/{batch_id}/cancel", cancel_batch, ["POST"]),
    *[(ep, sync_endpoint, ["POST"]) for ep in (L.CHAT, L.EMBEDDINGS, L.COMPLETIONS, L.RESPONSES, L.MODERATIONS)],
    ("/v1/models", list_models, ["GET"]),
    ("/health", health, ["GET"]),
    ("/metrics", metrics, ["GET"]),
    ("/openapi.json", openapi, ["GET"]),
]
