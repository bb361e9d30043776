"""`coldbatch ui`: a local dashboard over the client's job ledger (jobs, units, rounds, cost, outcomes).

Why: a job runs for minutes to hours and `coldbatch status` is text. This page shows the same ledger
live — each job's units and rounds with their provider batch ids, the cost estimate against what was
paid, what dedup and the cache saved, rows by outcome, a sample of OUTPUT — with the server
dashboard's page code (`server/ui/`: the same CSS and JS helpers, no build step, no CDN).

It only reads (the ledger is opened per request and never written), and it is for this machine only:
it binds loopback, and answers only requests whose Host is a loopback name, so a web page cannot read
the ledger through DNS rebinding. The ledger holds paths and OUTPUT rows; there is no login.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from coldbatch.errors import ApiError
from coldbatch.server import dashboard
from coldbatch.store.interfaces import LedgerStore
from coldbatch.store.ledger import Ledger
from coldbatch.store.records import UnitRecord

SAMPLE_ROWS = 10
SAMPLE_CELL_CHARS = 200
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
_ASSETS = {
    "jobs.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


class LoopbackHostOnly:
    """Refuses requests whose Host header is not a loopback name (DNS rebinding)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = urlsplit(f"//{host}").hostname or ""
            if name not in LOOPBACK_NAMES and f"[{name}]" not in LOOPBACK_NAMES:
                await Response("Forbidden: coldbatch ui answers loopback names only.", status_code=403)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


def create_jobs_app(ledger_path: Path) -> Starlette:
    """The app behind `coldbatch ui` for the ledger at `ledger_path`."""

    def ledger() -> LedgerStore:
        if not ledger_path.exists():
            raise ApiError(404, f"No ledger at {ledger_path}: run a job first (coldbatch run).")
        return Ledger(ledger_path)

    async def page(request: Request) -> Response:
        return dashboard.html_page("jobs.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            return Response("Not found.", status_code=404)
        return Response(
            dashboard.asset_bytes(name),
            media_type=_ASSETS[name],
            headers={**dashboard.SECURITY_HEADERS, "cache-control": "no-cache"},
        )

    async def jobs(request: Request) -> Response:
        led = ledger()
        try:
            rows = [job_row(led, j.id) for j in led.jobs()]
        finally:
            led.close()
        return JSONResponse({"now": time.time(), "ledger": str(ledger_path), "jobs": rows})

    async def job(request: Request) -> Response:
        led = ledger()
        try:
            body = job_detail(led, request.path_params["job_id"])
        finally:
            led.close()
        return JSONResponse({"now": time.time(), **body})

    def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.envelope(), status_code=exc.status)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/jobs/{job_id}", page),
            Route("/static/{name}", asset),
            Route("/api/jobs", jobs),
            Route("/api/jobs/{job_id}", job),
        ],
        exception_handlers={ApiError: api_error},
    )
    app.add_middleware(LoopbackHostOnly)
    return app


def job_row(led: LedgerStore, job_id: str) -> dict[str, Any]:
    """One line of the jobs list: status, paths, and the report's headline figures once finished."""
    j = led.job(job_id)
    if j is None:
        raise ApiError(404, f"No job named {job_id!r} in this ledger.")
    report = j.report or {}
    summary = led.summary(job_id)
    return {
        "id": job_id,
        "status": j.status.value,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
        "input_path": j.input_path,
        "output_path": j.output_path,
        "model": (j.options.get("spec") or {}).get("model"),
        "rows": report.get("rows"),
        "succeeded": report.get("succeeded", summary["succeeded"]),
        "failed": report.get("failed", summary["failed"]),
        "cost_usd": report.get("cost_usd"),
        "saving_pct": report.get("saving_pct"),
    }


def job_detail(led: LedgerStore, job_id: str) -> dict[str, Any]:
    """Everything the job page shows. Raises ApiError 404 for an unknown job."""
    j = led.job(job_id)
    if j is None:
        raise ApiError(404, f"No job named {job_id!r} in this ledger.")
    options = j.options
    whole = j.to_json()
    return {
        "job": {k: whole[k] for k in ("id", "status", "created_at", "updated_at", "input_path", "output_path")},
        "model": (options.get("spec") or {}).get("model"),
        "mode": options.get("mode"),
        "provider": options.get("provider"),
        "estimate": _estimate(whole["estimate"] or {}),
        "report": whole["report"],
        "summary": led.summary(job_id),
        "rows_by_state": led.row_counts(job_id) if led.keyed(job_id) else None,
        "units": [_unit(u, options.get("provider")) for u in led.units(job_id)],
        "sample": output_sample(Path(j.output_path)),
    }


def _estimate(est: dict[str, Any]) -> dict[str, Any]:
    return {
        "totals": est.get("totals"),
        "plan": est.get("plan"),
        "route": est.get("route"),
        "manifest_totals": est.get("manifest_totals"),
    }


def _unit(unit: UnitRecord, provider: str | None) -> dict[str, Any]:
    keys = (
        "id",
        "round",
        "shard",
        "try",
        "state",
        "requests",
        "tokens",
        "model",
        "batch_id",
        "batch_status",
        "detail",
        "updated_at",
    )
    u = unit.to_json()
    return {**{k: u[k] for k in keys}, "batch_url": batch_url(provider, unit.batch_id)}


def batch_url(provider: str | None, batch_id: str | None) -> str | None:
    """Where a person can look at the provider's batch: OpenAI's dashboard, or a coldbatch server's /ui/."""
    if not batch_id or not provider or provider == "embedded":
        return None
    parts = urlsplit(provider)
    if parts.hostname == "api.openai.com":
        return f"https://platform.openai.com/batches/{batch_id}"
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}/ui/batches/{batch_id}"  # a coldbatch serve (others: a 404)
    return None


def output_sample(path: Path, n: int = SAMPLE_ROWS) -> dict[str, Any] | None:
    """The first `n` rows of OUTPUT (CSV, JSONL or Parquet) as text cells, or None before it exists."""
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = []
        with path.open("rb") as fh:
            for line in fh:
                if len(records) >= n:
                    break
                if line.strip():
                    records.append(orjson.loads(line))
        columns = list(dict.fromkeys(k for r in records for k in r))
        rows = [[r.get(c) for c in columns] for r in records]
    else:
        import polars as pl

        frame = pl.scan_parquet(path) if suffix == ".parquet" else pl.scan_csv(path, infer_schema=False)
        df = frame.head(n).collect()
        columns, rows = df.columns, [list(r) for r in df.rows()]
    return {"columns": columns, "rows": [[_cell(v) for v in r] for r in rows]}


def _cell(v: Any) -> str | None:
    if v is None:
        return None
    text = (
        v
        if isinstance(v, str)
        else orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        if isinstance(v, list | dict)
        else str(v)
    )
    return text if len(text) <= SAMPLE_CELL_CHARS else text[:SAMPLE_CELL_CHARS] + "…"
