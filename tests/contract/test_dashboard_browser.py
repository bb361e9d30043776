"""The dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright): a batch sent with the
official SDK is watched to `completed` with the right counts, a cancel from the page works, and a second
key cannot see the first key's batch. Screenshots of the main pages go to `out/screenshots/`
(git-ignored; `COLDBATCH_SCREENSHOTS` moves them); docs/screenshots/ holds an example set.

Skipped, with the reason, where Playwright or /usr/bin/chromium is missing (`scripts/system-deps` installs Chromium).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from coldbatch.engines.echo import EchoEngine

from .conftest import ServeFactory, Server
from .test_jobs_ui import JOB, make_ledger

CHROMIUM = Path(os.environ.get("COLDBATCH_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; scripts/system-deps does it)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
axe = pytest.importorskip(
    "axe_playwright_python.sync_playwright", reason="axe-playwright-python is not installed (pip install -e .[dev])"
)

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("COLDBATCH_SCREENSHOTS", REPO / "out" / "screenshots"))
CHAT = "/v1/chat/completions"
KEYS = ["sk-alice", "sk-bob"]
TIMEOUT_MS = 30_000
ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    yield p
    context.close()


def shot(page: Any, name: str) -> None:
    """A screenshot of the page, after axe-core (WCAG 2 A and AA rules: contrast, labels, names, landmarks…)
    found nothing to report on it."""
    found = axe.Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}})
    problems = [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in found.response["violations"]
    ]
    assert found.response["passes"], "axe-core checked nothing"
    assert problems == [], f"accessibility on {name}: {problems}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def submit(client: openai.OpenAI, lines: list[dict[str, Any]], description: str) -> Any:
    data = b"".join(json.dumps(ln).encode() + b"\n" for ln in lines)
    f = client.files.create(file=("reviews.jsonl", data, "application/jsonl"), purpose="batch")
    return client.batches.create(
        input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"description": description}
    )


def line(cid: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Review {cid}"}], **body},
    }


def wait_status(page: Any, status: str) -> None:
    page.locator(f'#batch-status[data-status="{status}"]').wait_for(timeout=TIMEOUT_MS)


def test_a_batch_is_watched_to_completed_with_the_right_counts(serve: ServeFactory, page: Any) -> None:
    srv = serve(engine=EchoEngine(latency=0.02, max_concurrency=2), api_keys=KEYS)
    client = srv.client("sk-alice")
    lines = [line(f"row-{i}") for i in range(1, 121)] + [line("row-121", echo_fail=400), line("row-122", echo_fail=503)]
    batch = submit(client, lines, "nightly review labels")

    page.goto(f"{srv.root}/ui/?key=sk-alice")
    assert page.url == f"{srv.root}/ui/"  # the key left the address bar
    row = page.locator(f'tr[data-id="{batch.id}"]')
    row.locator("td", has_text=re.compile(r"[1-9]\d* of 122")).wait_for()  # live counts
    assert "nightly review labels" in row.inner_text()
    shot(page, "batches")

    row.get_by_role("link", name=batch.id).click()
    page.wait_for_url(f"**/ui/batches/{batch.id}")
    wait_status(page, "completed")
    status = page.locator("#batch-status").inner_text()
    assert "122 of 122 requests done: 120 completed, 2 failed" in status
    errors = page.locator("table[aria-labelledby=err-h] tbody tr")
    assert errors.count() == 2
    assert [errors.nth(i).locator("td").nth(0).inner_text() for i in range(2)] == ["121", "122"]
    assert "echo_fail" in errors.nth(0).inner_text()
    timeline = page.get_by_role("list", name="Status changes").inner_text()
    assert all(s in timeline for s in ("validating", "in progress", "finalizing", "completed"))
    shot(page, "batch-completed")
    page.emulate_media(color_scheme="dark")  # the dark scheme passes the same checks
    shot(page, "batch-completed-dark")
    page.emulate_media(color_scheme="light")

    done = client.batches.retrieve(batch.id)
    out = page.get_by_role("link", name="Download output")
    with page.expect_download() as dl:
        out.click()
    assert Path(dl.value.path()).read_bytes().count(b"\n") == done.request_counts.completed == 120

    page.get_by_role("link", name="Files").click()
    page.locator("td", has_text="reviews.jsonl").wait_for()
    shot(page, "files")


def test_cancel_from_the_page(serve: ServeFactory, page: Any) -> None:
    srv = serve(engine=EchoEngine(latency=0.25, max_concurrency=1))  # no keys: loopback, no login
    client = srv.client()
    batch = submit(client, [line(f"row-{i}") for i in range(400)], "a long one")

    page.goto(f"{srv.root}/ui/batches/{batch.id}")
    wait_status(page, "in_progress")
    page.locator("#batch-status", has_text=re.compile(r"[1-9]\d* of 400")).wait_for()  # running, counts live
    page.get_by_role("img", name=re.compile("^Throughput since this page was opened")).wait_for()
    shot(page, "batch-in-progress")
    for _ in range(30):  # by keyboard only: Tab to the button, Enter, Enter again to confirm
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Cancel batch":
            break
    else:
        raise AssertionError("Tab never reached the cancel button")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.textContent") == "Yes, cancel this batch"
    page.keyboard.press("Enter")
    wait_status(page, "cancelled")

    b = client.batches.retrieve(batch.id)
    assert b.status == "cancelled" and b.request_counts is not None
    assert b.request_counts.completed + b.request_counts.failed == 400 and b.request_counts.failed > 0
    assert f"{b.request_counts.completed} completed" in page.locator("#batch-status").inner_text()
    assert page.get_by_role("button", name="Cancel batch").count() == 0
    shot(page, "batch-cancelled")


def test_a_second_key_cannot_see_the_first_keys_batch(serve: ServeFactory, page: Any) -> None:
    srv: Server = serve(api_keys=KEYS)
    batch = submit(srv.client("sk-alice"), [line("a"), line("b")], "alice's batch")

    page.goto(f"{srv.root}/ui/")
    page.wait_for_url("**/ui/login?next=*")
    page.get_by_label("API key").fill("sk-bob")
    shot(page, "login")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{srv.root}/ui/")
    page.locator("caption", has_text="No batches yet.").wait_for()
    assert batch.id not in page.content()

    page.goto(f"{srv.root}/ui/batches/{batch.id}")
    page.get_by_role("heading", name="Not found").wait_for()
    assert page.request.get(f"{srv.root}/ui/api/batches/{batch.id}").status == 404

    # the same browser logged in as alice (a key link replaces the session) does see it
    page.goto(f"{srv.root}/ui/batches/{batch.id}?key=sk-alice")
    page.locator("#batch-status").wait_for()
    assert batch.id in page.locator("h1").inner_text()


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Any ASGI app under uvicorn on a free loopback port, in a thread; yields its root URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_job_dashboard_shows_units_cost_and_output(tmp_path: Path, page: Any) -> None:
    from coldbatch.server.jobs_ui import create_jobs_app

    with running(create_jobs_app(make_ledger(tmp_path))) as root:
        page.goto(root + "/")
        page.get_by_role("link", name=JOB).click()
        page.locator('#job-status[data-status="done"]').wait_for()
        units = page.locator("section[aria-labelledby=units-h] tbody tr")
        assert units.count() == 2
        link = units.nth(0).get_by_role("link", name="batch_aaa")
        assert link.get_attribute("href") == "http://127.0.0.1:8000/ui/batches/batch_aaa"
        assert page.get_by_role("img", name="Paid: $0.0070").count() == 1
        assert page.locator("section[aria-labelledby=sample-h] tbody tr").count() == 6
        chart = page.get_by_role("img", name=re.compile("^Requests collected"))
        assert "Requests collected: 5 in" in (chart.get_attribute("aria-label") or "")
        shot(page, "job")
        page.emulate_media(color_scheme="dark")
        shot(page, "job-dark")
