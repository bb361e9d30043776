"""`create_app()`: the Starlette application behind `coldbatch serve`.

The lifespan opens the store, blob folder and engine, starts the executor, and hands them to the
handlers as `request.state.services`. `ApiError` is turned into OpenAI's error envelope in exactly one
place (`_api_error`); every response carries an `x-request-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coldbatch.engines.base import Engine
from coldbatch.errors import ApiError
from coldbatch.server import anthropic_api, dashboard, dialects, routes, tracing
from coldbatch.server.app_types import ServerSettings, Services
from coldbatch.server.executor import Executor
from coldbatch.server.fastreads import FastReads
from coldbatch.server.scheduler import Slots
from coldbatch.store.blobs import LocalBlobStore
from coldbatch.store.space import is_disk_full
from coldbatch.store.sqlite import SqliteStore

logger = logging.getLogger(__name__)


def owner_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


class RequestIdMiddleware:
    """Adds `x-request-id` to every response (pure ASGI: streaming bodies stay streaming).

    It is also where an unexpected exception becomes OpenAI's 500 envelope: Starlette's own
    `ServerErrorMiddleware` sits outside every user middleware, so a 500 rendered there would go out
    without the request id (and uvicorn would log the exception a second time).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = "req_" + secrets.token_hex(12)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise  # too late for an error response; the server closes the connection
            if is_disk_full(exc):
                logger.warning("disk full on %s %s (%s): answered 507", scope.get("method"), scope.get("path"), rid)
            else:
                logger.exception("unhandled error on %s %s (%s)", scope.get("method"), scope.get("path"), rid)
            await _server_error_response(exc)(scope, receive, send_with_id)


def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {}
    if exc.should_retry is not None:
        headers["x-should-retry"] = "true" if exc.should_retry else "false"
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=headers)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    msg = "Not found." if exc.status_code == 404 else str(exc.detail)
    response = _api_error(request, ApiError(exc.status_code, msg))
    response.headers.update(exc.headers or {})  # e.g. `Allow` on a 405
    return response


def _server_error_response(cause: BaseException | None = None) -> Response:
    """500, or 507 when the cause is a full disk: the server's condition, which passes (the SDK retries 5xx)."""
    if cause is not None and is_disk_full(cause):
        exc = ApiError(
            507,
            "The server is out of disk space and stored nothing; try again later.",
            type_="server_error",
            code="insufficient_storage",
        )
        return JSONResponse(exc.envelope(), status_code=exc.status)
    exc = ApiError(500, "The server had an error while processing your request.", type_="server_error")
    return JSONResponse(exc.envelope(), status_code=exc.status)


def _server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _server_error_response(exc)


def scaleout_services(settings: ServerSettings, engine: Engine, slots: Slots) -> tuple[Any, Any, Any, list[Any]]:
    """PostgreSQL store, S3 (or folder) blobs, the coordinator and (unless `execute` is off) a chunk worker.
    Opening them checks them: an unreachable database or bucket stops the start with a message naming it."""
    from coldbatch.server.chunk_worker import ChunkWorker
    from coldbatch.server.scaleout import Coordinator, open_blobs
    from coldbatch.store.postgres import PgStore

    store = PgStore(settings.store_url or "")
    blobs = open_blobs(settings.blobs_url, settings.data_dir)
    coordinator = Coordinator(
        store,
        blobs,
        engine,
        config=settings.executor,
        lease_seconds=settings.lease_seconds,
        chunk_lines=settings.chunk_lines,
        orphan_grace=settings.orphan_grace_seconds,
    )
    runners: list[Any] = [coordinator]
    if settings.execute:
        coordinator.worker = ChunkWorker(
            store, blobs, engine, slots, config=settings.executor, lease_seconds=settings.lease_seconds
        )
        runners.append(coordinator.worker)
    return store, blobs, coordinator, runners


def create_app(settings: ServerSettings, engine: Engine) -> Starlette:
    engine = dialects.wrap(engine)  # + Anthropic messages and OpenAI responses, translated to chat

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        slots = Slots(engine.info.most_concurrency)
        if settings.store_url:
            store, blobs, executor, runners = await asyncio.to_thread(scaleout_services, settings, engine, slots)
        else:
            store = SqliteStore(settings.data_dir / "coldbatch.sqlite3")
            blobs = LocalBlobStore(settings.data_dir / "files")
            blobs.clear_tmp()
            executor = Executor(store, blobs, engine, slots, config=settings.executor)
            runners = [executor]
        executor.tracing = tracing.from_env(os.environ, settings.tracer_provider)  # no-op unless OTEL_* says so
        services = Services(
            settings,
            store,
            blobs,
            engine,
            slots,
            executor,
            {hashlib.sha256(k.encode()).hexdigest(): owner_id(k) for k in settings.api_keys},
        )
        tasks = [asyncio.create_task(r.run_forever(), name=type(r).__name__) for r in runners]
        try:
            yield {"services": services}
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await executor.aclose()
            await asyncio.to_thread(executor.tracing.close)
            await engine.aclose()
            store.close()

    app = Starlette(
        routes=[
            Route(path, fn, methods=methods)
            for path, fn, methods in (*routes.ROUTES, *anthropic_api.ROUTES, *dashboard.ROUTES)
        ],
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.add_middleware(FastReads)  # the polls, without the framework (inside: the request id still applies)
    app.add_middleware(RequestIdMiddleware)
    return app
