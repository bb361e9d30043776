"""HTTP handlers for Anthropic's `/v1/messages` and `/v1/messages/batches`, on the same store, engine, keys
and executor as the OpenAI surface.

A Message Batch is stored as an ordinary batch (docs/decisions.md): its inline requests are written as an
internal input file of OpenAI-style lines (`url: /v1/messages`, `body: params`), the executor runs it like
any batch (the dialect engine translates each request, `server/dialects/`), and the results stream
translates the output and error files' lines into Anthropic's result lines. Both the batch and its files
belong to the key's owner id plus `ANTHROPIC_OWNER`, so an Anthropic batch is never listed, read or
cancelled through `/v1/batches` or `/v1/files` (and the reverse), while per-key isolation is unchanged.
Errors use Anthropic's envelope; a request's params that break the Messages schema are not refused at
create: that request ends `errored` (Anthropic validates params asynchronously too).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from coldbatch.core.status import BatchStatus as S
from coldbatch.errors import ApiError
from coldbatch.protocol import batches as B
from coldbatch.protocol import limits as L
from coldbatch.server import routes
from coldbatch.server.app_types import Services
from coldbatch.server.dialects import anthropic as A
from coldbatch.server.scheduler import HOT

ANTHROPIC_OWNER: Final = ":anthropic"  #: appended to the key's owner id for Anthropic batches and their files
MAX_REQUESTS: Final = 100_000
MAX_BATCH_BYTES: Final = 256 * 1000 * 1000
RESULTS_TTL: Final = 29 * 86_400  #: results are kept 29 days after creation, as Anthropic's
_CUSTOM_ID: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NEVER_RUN: Final = (b'"error":{"code":"batch_cancelled"', b'"error":{"code":"batch_expired"')
_never_run_cache: dict[str, int] = {}

Handler = Callable[[Request], Awaitable[Response]]


def anthropic_errors(fn: Handler) -> Handler:
    """Render `ApiError`s in Anthropic's envelope (`{"type": "error", "error": {"type", "message"}}`)."""

    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as exc:
            return JSONResponse(A.error_envelope(exc.status, exc.message), status_code=exc.status)

    handler.__name__ = handler.__qualname__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _owner(request: Request) -> str:
    return routes.caller(request) + ANTHROPIC_OWNER


# -- /v1/messages --------------------------------------------------------------------------------------------
@anthropic_errors
async def create_message(request: Request) -> Response:
    svc = routes.services(request)
    routes.caller(request)
    body = await routes.json_body(request, L.MAX_LINE_BYTES)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    started = time.perf_counter()
    async with svc.slots.slot(HOT):
        result = await svc.engine.complete(A.MESSAGES, body)
    svc.metrics.sync_request(A.MESSAGES, body.get("model"), result, time.perf_counter() - started)
    return JSONResponse(result.body, status_code=result.status_code)


# -- /v1/messages/batches ------------------------------------------------------------------------------------
def _check_requests(body: object) -> list[dict[str, Any]]:
    """The create body's requests; a 400 naming the request for a broken envelope (params are checked at run)."""
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise ApiError(400, "requests: Field required (an array of {custom_id, params}).")
    reqs = body["requests"]
    if not 1 <= len(reqs) <= MAX_REQUESTS:
        raise ApiError(400, f"requests: a batch holds 1 to {MAX_REQUESTS:,} requests, not {len(reqs):,}.")
    seen: set[str] = set()
    for i, r in enumerate(reqs):
        if not isinstance(r, dict) or not isinstance(r.get("params"), dict):
            raise ApiError(400, f"requests.{i}.params: Field required (an object of Messages API parameters).")
        cid = r.get("custom_id")
        if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
            raise ApiError(
                400, f"requests.{i}.custom_id: must be 1 to 64 characters of letters, digits, '_' and '-', not {cid!r}."
            )
        if cid in seen:
            raise ApiError(
                400,
                f"requests.{i}.custom_id: {cid!r} is used by an earlier request; custom_id values "
                "must be unique within a batch.",
            )
        seen.add(cid)
    return reqs


def _write_input(svc: Services, file_id: str, reqs: list[dict[str, Any]]) -> int:
    size = 0
    with svc.blobs.writer(file_id) as sink:
        for r in reqs:
            line = (
                orjson.dumps({"custom_id": r["custom_id"], "method": "POST", "url": A.MESSAGES, "body": r["params"]})
                + b"\n"
            )
            sink.write(line)
            size += len(line)
    return size


@anthropic_errors
async def create_batch(request: Request) -> Response:
    svc, owner = routes.services(request), _owner(request)
    reqs = _check_requests(await routes.json_body(request, min(MAX_BATCH_BYTES, svc.settings.max_upload_bytes)))
    now = int(time.time())
    bid, fid = B.new_id("batch_"), B.new_id("file-")
    size = await asyncio.to_thread(_write_input, svc, fid, reqs)
    svc.store.create_file(
        {
            "id": fid,
            "owner": owner,
            "filename": f"{A.batch_id(bid)}.requests.jsonl",
            "purpose": "batch",
            "bytes": size,
            "created_at": now,
            "expires_at": now + RESULTS_TTL,
        }
    )
    svc.store.create_batch(
        {
            "id": bid,
            "owner": owner,
            "endpoint": A.MESSAGES,
            "model": None,
            "input_file_id": fid,
            "completion_window": "24h",
            "status": S.VALIDATING.value,
            "created_at": now,
            "expires_at": now + B.WINDOW_24H,
            "metadata": None,
            "output_ttl": RESULTS_TTL,
            "total": len(reqs),
        }
    )
    svc.executor.notify()
    return _render(request, svc, _stored(svc, A.batch_id(bid), owner))


def _stored(svc: Services, msgbatch: str, owner: str) -> dict[str, Any]:
    sid = A.stored_id(msgbatch)
    row = svc.store.get_batch(sid, owner) if sid else None
    if row is None:
        raise ApiError(404, f"message_batch_id: no Message Batch found with id '{msgbatch}'.")
    return row


def _never_run(svc: Services, row: dict[str, Any]) -> int:
    """Requests of a cancelled or expired batch that never ran: lines of its error file written for them (by
    `Executor._finalize`), counted once per file (a terminal batch's files never change)."""
    fid = row["error_file_id"]
    if row["status"] not in ("cancelled", "expired") or not fid:
        return 0
    if fid not in _never_run_cache:
        with svc.blobs.open(fid) as fh:
            _never_run_cache[fid] = sum(1 for line in fh if any(m in line for m in _NEVER_RUN))
        if len(_never_run_cache) > 4096:
            _never_run_cache.pop(next(iter(_never_run_cache)))
    return _never_run_cache[fid]


def _object(request: Request, svc: Services, row: dict[str, Any]) -> dict[str, Any]:
    url = str(request.base_url).rstrip("/") + f"/v1/messages/batches/{A.batch_id(row['id'])}/results"
    return A.batch_object(row, url, _never_run(svc, row))


def _render(request: Request, svc: Services, row: dict[str, Any]) -> Response:
    return JSONResponse(_object(request, svc, row))


@anthropic_errors
async def retrieve_batch(request: Request) -> Response:
    svc, owner = routes.services(request), _owner(request)
    row = _stored(svc, request.path_params["batch_id"], owner)
    return JSONResponse(await asyncio.to_thread(_object, request, svc, row))


@anthropic_errors
async def list_batches(request: Request) -> Response:
    """Newest first; `after_id` pages on to older batches, `before_id` back to newer ones (limit 1-1000)."""
    svc, owner = routes.services(request), _owner(request)
    limit = routes._int_param(request, "limit", 20, 1, 1000)
    after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
    if before:
        rows, _ = svc.store.list_batches(owner, after=None, limit=10_000)
        ids = [r["id"] for r in rows]
        end = ids.index(A.stored_id(before) or "") if A.stored_id(before) in ids else 0
        rows, more = rows[max(0, end - limit) : end], end > limit
    else:
        rows, more = svc.store.list_batches(owner, after=A.stored_id(after) if after else None, limit=limit)
    data = await asyncio.to_thread(lambda: [_object(request, svc, r) for r in rows])
    return JSONResponse(
        {
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@anthropic_errors
async def cancel_batch(request: Request) -> Response:
    """Cancel; a batch already ending or ended is returned as it is (cancelling it changes nothing)."""
    svc, owner = routes.services(request), _owner(request)
    row = _stored(svc, request.path_params["batch_id"], owner)
    if row["status"] not in A.ENDED and row["status"] != S.FINALIZING.value:
        try:
            row = routes.cancel(svc, row["id"], owner)
        except ApiError as exc:
            if exc.status != 409:
                raise
            row = _stored(svc, request.path_params["batch_id"], owner)
    return _render(request, svc, row)


@anthropic_errors
async def delete_batch(request: Request) -> Response:
    """Delete an ended batch and its files; one still processing is refused (cancel it first)."""
    svc, owner = routes.services(request), _owner(request)
    msgbatch = request.path_params["batch_id"]
    row = _stored(svc, msgbatch, owner)
    if row["status"] not in A.ENDED:
        raise ApiError(400, f"Message Batch {msgbatch} cannot be deleted while it is processing; cancel it first.")
    forget = getattr(svc.store, "delete_batch", None)
    if forget is None:
        raise ApiError(501, "This server's store cannot delete batches.")
    if forget(row["id"], owner):
        for fid in (row["input_file_id"], row["output_file_id"], row["error_file_id"]):
            if fid and svc.store.delete_file(fid, owner):
                svc.blobs.delete(fid)
    return JSONResponse({"id": msgbatch, "type": "message_batch_deleted"})


@anthropic_errors
async def batch_results(request: Request) -> Response:
    """The results as JSONL (`MessageBatchIndividualResponse` lines), streamed from the result files."""
    svc, owner = routes.services(request), _owner(request)
    row = _stored(svc, request.path_params["batch_id"], owner)
    if row["status"] not in A.ENDED:
        raise ApiError(400, f"Message Batch {A.batch_id(row['id'])} has not finished processing: no results yet.")
    return StreamingResponse(_result_blocks(svc, row), media_type="application/binary")


def _result_blocks(svc: Services, row: dict[str, Any]) -> Iterator[bytes]:
    """~1 MiB blocks of result lines: output then error file; for a batch that failed as a whole (no result
    files), every request errored with the batch's error."""
    block: list[bytes] = []
    size = 0
    for line in _result_lines(svc, row):
        block.append(line)
        size += len(line)
        if size >= 1 << 20:
            yield b"".join(block)
            block, size = [], 0
    if block:
        yield b"".join(block)


def _result_lines(svc: Services, row: dict[str, Any]) -> Iterator[bytes]:
    if row["status"] == S.FAILED.value:
        errors = orjson.loads(row["errors"]) if row["errors"] else {}
        message = "; ".join(e.get("message") or "" for e in (errors.get("data") or [])) or "The batch failed."
        failed = orjson.dumps({"type": "errored", "error": A.error_envelope(500, message)})
        with svc.blobs.open(row["input_file_id"]) as fh:
            for raw in fh:
                if raw.strip():
                    cid = orjson.dumps(orjson.loads(raw)["custom_id"])
                    yield b'{"custom_id":' + cid + b',"result":' + failed + b"}\n"
        return
    seen: set[str] = set()
    for fid in (row["output_file_id"], row["error_file_id"]):
        if fid:
            with svc.blobs.open(fid) as fh:
                for raw in fh:
                    if raw.strip():
                        line = A.result_line(orjson.loads(raw))
                        seen.add(line["custom_id"])
                        yield orjson.dumps(line) + b"\n"
    if row["status"] in ("cancelled", "expired") and len(seen) < row["total"]:
        # cancelled (or expired) before it ran at all: no never-run lines were written for its requests
        kind = b'"canceled"' if row["status"] == "cancelled" else b'"expired"'
        with svc.blobs.open(row["input_file_id"]) as fh:
            for raw in fh:
                cid = orjson.loads(raw)["custom_id"] if raw.strip() else None
                if cid is not None and cid not in seen:
                    yield b'{"custom_id":' + orjson.dumps(cid) + b',"result":{"type":' + kind + b"}}\n"


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/v1/messages", create_message, ["POST"]),
    ("/v1/messages/batches", create_batch, ["POST"]),
    ("/v1/messages/batches", list_batches, ["GET"]),
    ("/v1/messages/batches/{batch_id}", retrieve_batch, ["GET"]),
    ("/v1/messages/batches/{batch_id}", delete_batch, ["DELETE"]),
    ("/v1/messages/batches/{batch_id}/cancel", cancel_batch, ["POST"]),
    ("/v1/messages/batches/{batch_id}/results", batch_results, ["GET"]),
]
