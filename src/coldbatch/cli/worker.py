"""`coldbatch worker` (execution only, for scale-out) and `coldbatch migrate`.

A worker has no HTTP API: it claims chunks of running batches from PostgreSQL, reads their lines from the
blob store, runs them on its engine and logs the results (server/chunk_worker.py). Any number of them, on
any number of machines, beside any number of `coldbatch serve --store postgresql://…` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import click

from coldbatch.errors import ConfigError

logger = logging.getLogger(__name__)


def open_backends(store_url: str, blobs_url: str | None, data_dir: Path, *, migrate: bool = True) -> tuple[Any, Any]:
    """Open (and migrate) the store and the blob store now, so an unreachable database or bucket stops the
    start with one message naming which, instead of a traceback from the first request."""
    if not store_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--store {store_url!r}: expected postgresql://USER@HOST[:PORT]/DB")
    try:
        from coldbatch.server.scaleout import open_blobs
        from coldbatch.store.postgres import PgStore, StoreUnavailable
        from coldbatch.store.s3 import BlobsUnavailable
    except ImportError as exc:  # pragma: no cover - without the [scale] extra
        raise ConfigError(f"--store needs the [scale] extra (pip install 'coldbatch[scale]'): {exc}") from exc
    try:
        store = PgStore(store_url, migrate=migrate)
    except StoreUnavailable as exc:
        raise ConfigError(str(exc)) from None
    try:
        blobs = open_blobs(blobs_url, data_dir)
    except (BlobsUnavailable, ValueError) as exc:
        store.close()
        raise ConfigError(str(exc)) from None
    return store, blobs


@click.command()
@click.option(
    "--store",
    "store_url",
    required=True,
    envvar="COLDBATCH_STORE",
    help="postgresql://USER@HOST[:PORT]/DB (the same as the serve processes').",
)
@click.option(
    "--blobs",
    "blobs_url",
    envvar="COLDBATCH_BLOBS",
    help="s3://BUCKET/PREFIX (endpoint from AWS_ENDPOINT_URL, credentials from the AWS variables).",
)
@click.option("--engine", required=True, help="Engine: llama-cpp, relay or echo (test fixture).")
@click.option(
    "--engine-option",
    "engine_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Engine constructor option (repeatable), e.g. --engine-option latency=0.02 for echo.",
)
@click.option("--engine-workers", type=click.IntRange(min=0), default=None, help="Engine worker processes.")
@click.option(
    "--lease-seconds",
    type=float,
    default=30.0,
    help="Chunk lease; renewed every third of it. A dead worker's chunks are claimed again after it.",
)
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on 127.0.0.1:PORT.")
@click.option(
    "--chunks-at-once",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Chunks in progress at once (they share the engine's concurrency): 2 overlaps one chunk's "
    "reads and claims with another's execution.",
)
@click.option("--poll-seconds", type=float, default=0.5, help="How often an idle worker looks for work.")
def worker(
    store_url: str,
    blobs_url: str | None,
    engine: str,
    engine_options: tuple[str, ...],
    engine_workers: int | None,
    lease_seconds: float,
    metrics_port: int | None,
    chunks_at_once: int,
    poll_seconds: float,
) -> None:
    """Execute chunks of running batches (scale-out): no HTTP API, only a database and a bucket."""
    from coldbatch.cli.serve import parse_engine_options
    from coldbatch.engines import pool
    from coldbatch.server import dialects
    from coldbatch.server.chunk_worker import ChunkWorker
    from coldbatch.server.executor import ExecutorConfig

    store, blobs = open_backends(store_url, blobs_url, Path("coldbatch-data"))
    plugins = os.environ.get("COLDBATCH_PLUGINS")
    eng = pool.open_engine(
        engine,
        workers=engine_workers,
        only=plugins.split(",") if plugins else None,
        **parse_engine_options(engine_options),
    )
    eng = dialects.wrap(eng)  # Anthropic batches and /v1/responses lines, translated to chat as in `serve`
    w = ChunkWorker(
        store,
        blobs,
        eng,
        config=ExecutorConfig(poll_seconds=poll_seconds),
        lease_seconds=lease_seconds,
        chunks_at_once=chunks_at_once,
    )
    if metrics_port is not None:
        _serve_metrics(w, metrics_port)
    click.echo(f"coldbatch worker {w.me}: engine {eng.info.name}, leases of {lease_seconds:g} s", err=True)
    try:
        asyncio.run(_run(w))
    finally:
        store.close()


async def _run(w: Any) -> None:
    """Run until SIGTERM/SIGINT; the chunks held then are given up by their leases running out (or at once
    when the loop is cancelled between requests)."""
    task = asyncio.create_task(w.run_forever())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await w.engine.aclose()


def _serve_metrics(w: Any, port: int) -> None:
    """Requests and chunks this worker executed, as Prometheus counters on 127.0.0.1:PORT/metrics."""
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.core import CounterMetricFamily

    class _Collector:
        def collect(self) -> Any:
            yield CounterMetricFamily(
                "coldbatch_worker_requests", "Requests executed by this worker", value=w.requests_done
            )
            yield CounterMetricFamily("coldbatch_worker_chunks", "Chunks finished by this worker", value=w.chunks_done)

    REGISTRY.register(_Collector())  # type: ignore[arg-type]
    start_http_server(port, addr="127.0.0.1")


@click.command()
@click.option("--store", "store_url", required=True, envvar="COLDBATCH_STORE", help="postgresql://USER@HOST/DB")
def migrate(store_url: str) -> None:
    """Bring a PostgreSQL store's schema up to date (serve also does it at start), then exit."""
    from coldbatch.store.postgres import PgStore, StoreUnavailable

    try:
        store = PgStore(store_url, migrate=False)
    except StoreUnavailable as exc:
        raise ConfigError(str(exc)) from None
    try:
        applied = store.migrate()
    finally:
        store.close()
    click.echo(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")
