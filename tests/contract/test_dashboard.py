"""The dashboard's HTTP contract (no browser): login and session cookie, one key's view, paging, errors.

The pages themselves are exercised in real Chromium by test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai

from .conftest import ServeFactory, Server

CHAT = "/v1/chat/completions"
KEYS = ["sk-alice", "sk-bob"]


def _line(cid: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {cid}"}], **body},
    }


def _batch(client: openai.OpenAI, lines: list[dict[str, Any]], wait: bool = True) -> Any:
    data = b"".join(json.dumps(ln).encode() + b"\n" for ln in lines)
    f = client.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 20
    while wait and b.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {b.status}"
        time.sleep(0.05)
        b = client.batches.retrieve(b.id)
    return b


def _session(srv: Server, key: str) -> Any:
    """An httpx client logged in through `GET /ui/?key=KEY` (no bearer header: the cookie only)."""
    http = srv.http(None)
    r = http.get("/ui/", params={"key": key})
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    return http


def test_login_by_key_link_drops_the_key_and_keeps_the_rest(serve: ServeFactory) -> None:
    srv = serve(api_keys=KEYS)
    http = srv.http(None)
    r = http.get("/ui/", params={"key": "sk-alice", "page": "2", "status": "completed"})
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/?page=2&status=completed"
    assert http.get("/ui/").status_code == 200
    assert http.get("/ui/api/overview").json()["keys"] is True


def test_without_a_session_pages_redirect_and_the_api_says_401(serve: ServeFactory) -> None:
    srv = serve(api_keys=KEYS)
    http = srv.http(None)
    r = http.get("/ui/batches/batch_x")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fbatches%2Fbatch_x"
    assert http.get("/ui/api/batches").status_code == 401
    bad = http.get("/ui/", params={"key": "sk-wrong"})
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    http.cookies.set("coldbatch_ui", "key_0123456789abcdef|9999999999|00", path="/ui")  # forged
    assert http.get("/ui/api/batches").status_code == 401


def test_login_form(serve: ServeFactory) -> None:
    srv = serve(api_keys=KEYS)
    http = srv.http(None)
    form = http.get("/ui/login", params={"next": "/ui/files"})
    assert form.status_code == 200 and 'name="key"' in form.text and 'value="/ui/files"' in form.text
    assert http.post("/ui/login", data={"key": "nope", "next": "/ui/files"}).status_code == 401
    r = http.post("/ui/login", data={"key": "sk-bob", "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/"  # never an open redirect
    assert http.get("/ui/api/files").status_code == 200
    assert http.post("/ui/logout").status_code == 303
    assert http.get("/ui/api/files").status_code == 401


def test_a_key_sees_only_its_own_batches_and_files(serve: ServeFactory) -> None:
    srv = serve(api_keys=KEYS)
    mine = _batch(srv.client("sk-alice"), [_line("a"), _line("b", echo_fail=400)])
    alice, bob = _session(srv, "sk-alice"), _session(srv, "sk-bob")
    assert [b["id"] for b in alice.get("/ui/api/batches").json()["batches"]] == [mine.id]
    assert bob.get("/ui/api/batches").json() | {"now": 0} == {
        "now": 0,
        "page": 1,
        "per_page": 25,
        "total": 0,
        "counts": {},
        "batches": [],
    }
    assert bob.get(f"/ui/api/batches/{mine.id}").status_code == 404
    assert bob.post(f"/ui/api/batches/{mine.id}/cancel").status_code == 404
    assert bob.get(f"/ui/files/{mine.output_file_id}/content").status_code == 404
    assert bob.get("/ui/api/files").json()["files"] == []
    assert alice.get(f"/ui/files/{mine.output_file_id}/content").content.count(b"\n") == 1


def test_no_keys_no_login(server: Server) -> None:
    http = server.http(None)
    assert http.get("/ui/").status_code == 200
    assert http.get("/ui/login").headers.get("location") == "/ui/"
    assert http.get("/ui/api/batches").status_code == 200


def test_batch_detail_has_events_and_errors_with_line_numbers(server: Server) -> None:
    lines = [_line("ok1"), _line("bad2", echo_fail=400), _line("ok3"), _line("bad4", echo_fail=503)]
    b = _batch(server.client(), lines)
    d = server.http(None).get(f"/ui/api/batches/{b.id}")
    assert d.status_code == 200 and "app;dur=" in d.headers["server-timing"]
    body = d.json()
    assert [(e["from_status"], e["to_status"]) for e in body["events"]] == [
        (None, "validating"),
        ("validating", "in_progress"),
        ("in_progress", "finalizing"),
        ("finalizing", "completed"),
    ]
    assert [(e["line"], e["custom_id"], e["status_code"], e["code"]) for e in body["errors"]] == [
        (2, "bad2", 400, "echo_fail"),
        (4, "bad4", 503, "echo_fail"),
    ]
    assert body["input_file"]["id"] == b.input_file_id


def test_validation_errors_are_listed(server: Server) -> None:
    b = _batch(server.client(), [_line("a"), _line("a")])  # duplicate custom_id
    assert b.status == "failed"
    errors = server.http(None).get(f"/ui/api/batches/{b.id}").json()["errors"]
    assert errors and errors[0]["line"] == 2 and errors[0]["code"]


def test_cancel_from_the_dashboard_and_cross_origin_refused(serve: ServeFactory) -> None:
    from coldbatch.engines.echo import EchoEngine

    srv = serve(engine=EchoEngine(latency=0.2, max_concurrency=1))
    b = _batch(srv.client(), [_line(f"r{i}") for i in range(100)], wait=False)
    http = srv.http(None)
    evil = http.post(f"/ui/api/batches/{b.id}/cancel", headers={"origin": "https://evil.example"})
    assert evil.status_code == 403
    r = http.post(f"/ui/api/batches/{b.id}/cancel", headers={"origin": srv.root})
    assert r.status_code == 200 and r.json()["batch"]["status"] in ("cancelling", "cancelled")


def test_paging_and_status_filter(server: Server) -> None:
    client = server.client()
    ids = [_batch(client, [_line("x")]).id for _ in range(3)]
    http = server.http(None)
    page = http.get("/ui/api/batches", params={"status": "completed"}).json()
    assert page["total"] == 3 and [b["id"] for b in page["batches"]] == ids[::-1]
    assert http.get("/ui/api/batches", params={"page": "2"}).json()["batches"] == []
    assert http.get("/ui/api/batches", params={"page": "0"}).status_code == 400


def test_assets_are_served_from_the_package(server: Server) -> None:
    http = server.http(None)
    js = http.get("/ui/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "default-src 'self'" in js.headers["content-security-policy"]
    assert http.get("/ui/static/style.css").headers["content-type"].startswith("text/css")
    assert http.get("/ui/static/..%2Fdashboard.py").status_code == 404
    assert http.get("/ui").status_code in (307, 308)
