"""The dashboard at `/ui/`: batches, their progress and errors, files, engine workers, queue depth.

Why it is built like this:

- Same keys as the API, and a key sees only its own batches and files. A browser cannot send a bearer
  header on a link, so the key is exchanged once (login form, or `GET /ui/?key=KEY` for scripts and
  links, which then redirects to the same page without the key in the URL) for a session cookie: the
  owner id, an expiry and an HMAC with a secret made at start-up (a restart logs everyone out; nothing is
  stored). The cookie is HttpOnly and SameSite=Strict, and POSTs must come from this origin. A server
  with no keys (loopback only) needs no login.
- No build step and no CDN (the machine may be offline): `server/ui/` holds plain HTML, CSS and JS that
  ship in the wheel; the page polls the small JSON API below (`/ui/api/…`) and renders with the DOM
  (text only: filenames and metadata are the caller's data, never parsed as HTML).
- Paged: a page of batches is one indexed query (`ServerStore.batch_page`) plus one count by status, so
  it costs the same with 10 batches or 10,000 (bench/ui_page.py). Every JSON answer carries a
  `Server-Timing` header with its server time.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import html
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from coldbatch.core.status import TERMINAL
from coldbatch.errors import ApiError, not_found
from coldbatch.server import routes
from coldbatch.server.app_types import Services
from coldbatch.server.objects import batch_object, file_object
from coldbatch.server.scheduler import COLD, HOT
from coldbatch.validation import iter_lines

UI_DIR = Path(__file__).parent / "ui"
COOKIE = "coldbatch_ui"
SESSION_SECONDS = 12 * 3600
ERRORS_SHOWN = 20
PER_PAGE = 25
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # (no-referrer would make the browser send `Origin: null` on our POSTs)
}
_TERMINAL = {s.value for s in TERMINAL}


# -- sessions ------------------------------------------------------------------------------------------------
def _signature(secret: bytes, owner: str, expires: int) -> str:
    return hmac.new(secret, f"{owner}|{expires}".encode(), hashlib.sha256).hexdigest()


def _session_cookie(svc: Services, owner: str) -> str:
    expires = int(time.time()) + SESSION_SECONDS
    return f"{owner}|{expires}|{_signature(svc.session_secret, owner, expires)}"


def session_owner(request: Request) -> str | None:
    """The owner id of the browser's session; "local" when the server has no keys; None if not logged in."""
    svc = routes.services(request)
    if not svc.owners:
        return "local"
    owner, _, rest = request.cookies.get(COOKIE, "").partition("|")
    expires, _, mac = rest.partition("|")
    if not expires.isdigit() or int(expires) < time.time() or owner not in svc.owners.values():
        return None
    return owner if hmac.compare_digest(mac, _signature(svc.session_secret, owner, int(expires))) else None


def _owner_of_key(svc: Services, key: str) -> str | None:
    return svc.owners.get(hashlib.sha256(key.encode()).hexdigest()) if key else None


def _login(request: Request, owner: str, to: str) -> Response:
    response = RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        _session_cookie(routes.services(request), owner),
        max_age=SESSION_SECONDS,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _owner(request: Request) -> str:
    """The session's owner for the JSON API; 401 without a session."""
    owner = session_owner(request)
    if owner is None:
        raise ApiError(401, "Log in to the dashboard first (/ui/login).", code="invalid_api_key")
    return owner


def _same_origin(request: Request) -> None:
    """A POST must come from this dashboard (SameSite=Strict already keeps the cookie off other sites)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise ApiError(403, "Cross-origin request refused.")


# -- pages -----------------------------------------------------------------------------------------------------
@functools.cache
def asset_bytes(name: str) -> bytes:
    return (UI_DIR / name).read_bytes()


def html_page(name: str, status: int = 200, **slots: str) -> Response:
    body = asset_bytes(name)
    for slot, value in slots.items():
        body = body.replace(f"<!--{slot}-->".encode(), value.encode())
    return Response(
        body,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "cache-control": "no-store"},
    )


async def page(request: Request) -> Response:
    """Every dashboard page is the same shell; app.js renders the one the path names."""
    started, svc = time.perf_counter(), routes.services(request)
    key = request.query_params.get("key")
    if key is not None:
        owner = _owner_of_key(svc, key) if svc.owners else "local"
        if owner is None:
            return _login_page(request.url.path, "That API key is not valid on this server.", 401)
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "key"])
        return _login(request, owner, request.url.path + (f"?{rest}" if rest else ""))
    if session_owner(request) is None:
        return RedirectResponse("/ui/login?" + urlencode({"next": request.url.path}), status_code=303)
    return _timed(html_page("index.html", keys="true" if svc.owners else "false"), started)


async def root(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


def _next(raw: str | None) -> str:
    return raw if raw and raw.startswith("/ui/") and not raw.startswith("//") else "/ui/"


def _login_page(to: str, error: str = "", status: int = 200) -> Response:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return html_page("login.html", status, next=html.escape(_next(to), quote=True), error=message)


async def login_form(request: Request) -> Response:
    if not routes.services(request).owners:
        return RedirectResponse("/ui/", status_code=303)
    return _login_page(request.query_params.get("next", "/ui/"))


async def login(request: Request) -> Response:
    _same_origin(request)
    form = await request.form()
    key, to = str(form.get("key", "")).strip(), _next(str(form.get("next", "")))
    owner = _owner_of_key(routes.services(request), key)
    if owner is None:
        return _login_page(to, "That API key is not valid on this server.", 401)
    return _login(request, owner, to)


async def logout(request: Request) -> Response:
    _same_origin(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


async def asset(request: Request) -> Response:
    started, name = time.perf_counter(), request.path_params["name"]
    if name not in _ASSETS:
        raise not_found("file", name)
    return _timed(
        Response(
            asset_bytes(name), media_type=_ASSETS[name], headers={**SECURITY_HEADERS, "cache-control": "no-cache"}
        ),
        started,
    )


# -- JSON API ------------------------------------------------------------------------------------------------
def _timed(response: Response, started: float) -> Response:
    response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
    return response


def _json(body: dict[str, Any], started: float) -> Response:
    response = JSONResponse(body, headers={"cache-control": "no-store", "x-content-type-options": "nosniff"})
    return _timed(response, started)


def _page_number(request: Request, name: str = "page") -> int:
    raw = request.query_params.get(name, "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise ApiError(400, f"Invalid '{name}': a page number from 1.", param=name, code="invalid_value")
    return int(raw)


async def overview(request: Request) -> Response:
    """Counts by status of the caller's batches, the engine, its workers and the hot/cold queues."""
    started, svc, owner = time.perf_counter(), routes.services(request), _owner(request)
    engine, slots = svc.engine, svc.slots
    health = getattr(engine, "health", None)
    return _json(
        {
            "now": time.time(),
            "counts": svc.store.batch_status_counts(owner),
            "engine": {
                "name": engine.info.name,
                "fixture": engine.info.fixture,
                "workers": health() if health is not None else None,
            },
            "queues": {
                "capacity": slots.capacity,
                "in_use": slots.in_use,
                "hot_waiting": slots.waiting(HOT),
                "cold_waiting": slots.waiting(COLD),
            },
            "keys": bool(svc.owners),
        },
        started,
    )


async def list_batches(request: Request) -> Response:
    started, svc, owner = time.perf_counter(), routes.services(request), _owner(request)
    page_no, status = _page_number(request), request.query_params.get("status") or None
    counts = svc.store.batch_status_counts(owner)
    rows = svc.store.batch_page(owner, offset=(page_no - 1) * PER_PAGE, limit=PER_PAGE, status=status)
    total = counts.get(status, 0) if status else sum(counts.values())
    return _json(
        {
            "now": time.time(),
            "page": page_no,
            "per_page": PER_PAGE,
            "total": total,
            "counts": counts,
            "batches": [batch_object(r) for r in rows],
        },
        started,
    )


async def batch_detail(request: Request) -> Response:
    """One batch, its status events and its first per-line errors (with input line numbers)."""
    started, svc, owner = time.perf_counter(), routes.services(request), _owner(request)
    row = routes.stored_batch(svc, request.path_params["batch_id"], owner)
    errors = await asyncio.to_thread(batch_errors, svc, row, ERRORS_SHOWN)
    input_file = svc.store.get_file(row["input_file_id"], owner)
    return _json(
        {
            "now": time.time(),
            "batch": batch_object(row),
            "events": svc.store.event_log(row["id"]),
            "errors": errors,
            "input_file": file_object(input_file) if input_file else None,
        },
        started,
    )


async def cancel_batch(request: Request) -> Response:
    _same_origin(request)
    started, svc, owner = time.perf_counter(), routes.services(request), _owner(request)
    row = routes.cancel(svc, request.path_params["batch_id"], owner)
    return _json({"now": time.time(), "batch": batch_object(row)}, started)


async def list_files(request: Request) -> Response:
    started, svc, owner = time.perf_counter(), routes.services(request), _owner(request)
    page_no = _page_number(request)
    rows = svc.store.file_page(owner, offset=(page_no - 1) * PER_PAGE, limit=PER_PAGE + 1)
    return _json(
        {
            "now": time.time(),
            "page": page_no,
            "per_page": PER_PAGE,
            "has_more": len(rows) > PER_PAGE,
            "files": [file_object({**r, "status": "processed"}) for r in rows[:PER_PAGE]],
        },
        started,
    )


async def download(request: Request) -> Response:
    svc, owner = routes.services(request), session_owner(request)
    row = svc.store.get_file(request.path_params["file_id"], owner) if owner is not None else None
    if row is None:
        raise not_found("file", request.path_params["file_id"])
    return routes.send_file(svc, row)


# -- per-line errors -------------------------------------------------------------------------------------
def batch_errors(svc: Services, row: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The first `limit` per-line errors: validation errors of a failed batch; the logged failures of a
    running one; the first lines of a finished one's error file, with their input line numbers."""
    if row["errors"]:
        data = (orjson.loads(row["errors"]) or {}).get("data") or []
        return [
            {
                "line": e.get("line"),
                "custom_id": None,
                "status_code": None,
                "code": e.get("code"),
                "message": e.get("message"),
            }
            for e in data[:limit]
        ]
    if row["status"] not in _TERMINAL:
        return [_error_entry(data, line) for _, line, _, data in svc.store.failed_results(row["id"], limit)]
    if not row["error_file_id"] or not svc.blobs.exists(row["error_file_id"]):
        return []
    entries = []
    for raw in iter_lines(svc.blobs.local_path(row["error_file_id"])):
        if len(entries) >= limit:
            break
        if raw.strip():
            entries.append(_error_entry(raw, None))
    if svc.blobs.exists(row["input_file_id"]):
        lines = _input_lines(
            str(svc.blobs.local_path(row["input_file_id"])), tuple(e["custom_id"] for e in entries if e["custom_id"])
        )
        for e in entries:
            e["line"] = lines.get(e["custom_id"])
    return entries


def _error_entry(data: bytes, line: int | None) -> dict[str, Any]:
    """One error-file line → line, custom_id, HTTP status, error code and message."""
    obj = orjson.loads(data)
    response = obj.get("response") or {}
    err = obj.get("error") or ((response.get("body") or {}).get("error") or {})
    return {
        "line": line,
        "custom_id": obj.get("custom_id"),
        "status_code": response.get("status_code"),
        "code": err.get("code"),
        "message": err.get("message"),
    }


@functools.lru_cache(maxsize=64)
def _input_lines(path: str, custom_ids: tuple[str, ...]) -> dict[str, int]:
    """Input line numbers of these custom_ids (a finished batch's log is purged; its input file is not)."""
    wanted, found = set(custom_ids), {}
    for n, raw in enumerate(iter_lines(Path(path)), 1):
        if not wanted:
            break
        if raw.strip():
            cid = orjson.loads(raw).get("custom_id")
            if cid in wanted:
                found[cid] = n
                wanted.discard(cid)
    return found


ROUTES: list[tuple[str, Any, list[str]]] = [
    ("/ui", root, ["GET"]),
    ("/ui/", page, ["GET"]),
    ("/ui/files", page, ["GET"]),
    ("/ui/batches/{batch_id}", page, ["GET"]),
    ("/ui/login", login_form, ["GET"]),
    ("/ui/login", login, ["POST"]),
    ("/ui/logout", logout, ["POST"]),
    ("/ui/static/{name}", asset, ["GET"]),
    ("/ui/api/overview", overview, ["GET"]),
    ("/ui/api/batches", list_batches, ["GET"]),
    ("/ui/api/batches/{batch_id}", batch_detail, ["GET"]),
    ("/ui/api/batches/{batch_id}/cancel", cancel_batch, ["POST"]),
    ("/ui/api/files", list_files, ["GET"]),
    ("/ui/files/{file_id}/content", download, ["GET"]),
]
