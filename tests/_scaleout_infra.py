"""Real PostgreSQL and a real S3-compatible server for the scale-out tests (fixtures, imported by conftest).

- `COLDBATCH_TEST_POSTGRES_URL` (e.g. postgresql://postgres@127.0.0.1:5432/postgres): use that server;
  unset: start one (Debian's `postgresql` package: /usr/lib/postgresql/*/bin) on 127.0.0.1, in a temp
  data dir, as the `postgres` user when the tests run as root (PostgreSQL refuses root), stopped at the end.
- `COLDBATCH_TEST_S3_ENDPOINT` (e.g. http://127.0.0.1:9000, with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
  set): use that server; unset: start `moto_server` (the [dev] extra's moto[server]) on 127.0.0.1.
- `COLDBATCH_SKIP_SCALEOUT=1`: skip every test that needs them. Otherwise a missing PostgreSQL or S3
  server is a test failure, never a silent skip.

Each test gets its own PostgreSQL schema and its own bucket, so tests never see each other's rows.
Under pytest-xdist (scripts/test) each worker is its own session and starts its own servers, on its own free
ports and in its own temp data dir, only once one of its tests needs them: nothing is shared between workers.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SKIP_VAR, PG_VAR, S3_VAR = "COLDBATCH_SKIP_SCALEOUT", "COLDBATCH_TEST_POSTGRES_URL", "COLDBATCH_TEST_S3_ENDPOINT"
#: read once at import: the per-test fixture of tests/conftest.py drops COLDBATCH_* from the environment
_ENV = {k: os.environ.get(k) for k in (SKIP_VAR, PG_VAR, S3_VAR)}


@dataclass
class Infra:
    pg_url: str  #: a database the tests may create schemas in
    s3_endpoint: str
    aws_env: dict[str, str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or (
        [shutil.which("initdb")] if shutil.which("initdb") else []
    )
    if not bins:
        pytest.fail(
            f"PostgreSQL is not installed (no initdb): install Debian's `postgresql` (scripts/system-deps does), set "
            f"{PG_VAR}, or set {SKIP_VAR}=1 to skip the scale-out tests"
        )
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="coldbatch-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=300"
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _moto() -> Iterator[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        pytest.fail(f"moto_server is not installed (the [dev] extra's moto[server]): set {S3_VAR} or {SKIP_VAR}=1")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start (exit {proc.poll()})")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


_STACK: contextlib.ExitStack | None = None
_INFRA: Infra | None = None


def infra() -> Infra:
    """The process's PostgreSQL and S3 server, started on first use (also from plain factories such as the
    store contract suite's), stopped at the end of the session or, failing that, at exit."""
    global _STACK, _INFRA
    if _ENV[SKIP_VAR] == "1":
        pytest.skip(f"{SKIP_VAR}=1: the PostgreSQL + S3 tests are skipped")
    if _INFRA is None:
        stack = contextlib.ExitStack()
        try:
            pg = _ENV[PG_VAR] or stack.enter_context(_postgres())
            s3 = _ENV[S3_VAR] or stack.enter_context(_moto())
        except BaseException:
            stack.close()
            raise
        aws = {
            "AWS_ENDPOINT_URL": s3,
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        }
        os.environ.update(aws)
        _STACK, _INFRA = stack, Infra(pg, s3, aws)
        atexit.register(close_infra)
    return _INFRA


def close_infra() -> None:
    global _STACK, _INFRA
    if _STACK is not None:
        _STACK.close()
    _STACK = _INFRA = None


@pytest.fixture(scope="session")
def scaleout_infra() -> Iterator[Infra]:
    """The session's PostgreSQL and S3 server (started here unless the variables name running ones)."""
    yield infra()
    close_infra()


def pg_schema_url(name: str) -> str:
    """A URL of the session's database whose search_path is schema `name` (created if missing)."""
    import psycopg

    base = infra().pg_url
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{name}"


def s3_bucket(name: str) -> str:
    """Bucket `name` on the session's S3 server (created if missing)."""
    import boto3

    infra()
    s3 = boto3.client("s3")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=name)
    return name


@dataclass
class Backend:
    store_url: str  #: postgresql URL whose search_path is this test's own schema
    blobs_url: str  #: s3://BUCKET/PREFIX of this test's own bucket
    schema: str
    bucket: str


@pytest.fixture
def scaleout(scaleout_infra: Infra) -> Iterator[Backend]:
    """A fresh schema and a fresh bucket for one test (the schema is dropped afterwards)."""
    import psycopg

    schema, bucket = "t_" + secrets.token_hex(6), s3_bucket("cb-" + secrets.token_hex(6))
    yield Backend(pg_schema_url(schema), f"s3://{bucket}/data", schema, bucket)
    with psycopg.connect(scaleout_infra.pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
