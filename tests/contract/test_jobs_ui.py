"""`coldbatch ui`: the job ledger's JSON API and pages (the browser part is in test_dashboard_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from coldbatch.core.unit_state import UnitState
from coldbatch.runner.ledger import Ledger, Outcome
from coldbatch.server.jobs_ui import batch_url, create_jobs_app, output_sample

JOB = "tweets-20261203-1"


def _submitted(led: Ledger, unit_id: int, batch_id: str) -> None:
    """Walk a unit through its states to a completed batch, as a run does."""
    for to, fields in (
        (UnitState.UPLOADING, {}),
        (UnitState.UPLOADED, {"file_id": "file-" + batch_id}),
        (UnitState.CREATING, {}),
        (UnitState.CREATED, {"batch_id": batch_id}),
    ):
        assert led.move_unit(unit_id, to, **fields)
    led.set_batch_status(unit_id, "completed")


def make_ledger(home: Path) -> Path:
    """A finished two-round job: 6 rows, one retried into round 2, one failed for good; OUTPUT as CSV."""
    path = home / "ledger.sqlite3"
    led = Ledger(path)
    out = home / "labelled.csv"
    out.write_text(
        "tweet_id,text,label,outcome\n"
        + "".join(f"{i},tweet {i},positive,ok\n" for i in range(5))
        + "5,tweet 5,,failed\n"
    )
    led.create_job(
        JOB,
        "Tweets.csv",
        str(out),
        {"spec": {"model": "gpt-4o-mini"}, "mode": "batch", "provider": "http://127.0.0.1:8000/v1"},
    )
    led.set_job(
        JOB,
        status="prepared",
        estimate={
            "totals": {
                "sync_cost_usd": 0.02,
                "batch_cost_usd": 0.01,
                "final_cost_usd": 0.008,
                "input_tokens_to_send": 60,
            },
            "plan": {"requests": 6, "distinct_requests": 5, "cache_hits": 1, "requests_to_send": 4},
        },
    )
    led.add_units(
        JOB,
        [
            {
                "round": 1,
                "shard": 1,
                "path": "send-1.jsonl",
                "requests": 4,
                "bytes": 900,
                "sha256": "x",
                "model": "gpt-4o-mini",
                "tokens": 60,
            },
            {
                "round": 2,
                "shard": 1,
                "path": "retry-1.jsonl",
                "requests": 1,
                "bytes": 200,
                "sha256": "y",
                "model": "gpt-4o-mini",
                "tokens": 15,
            },
        ],
    )
    assert led.set_job(JOB, status="running")
    u1, u2 = led.units(JOB)
    _submitted(led, u1.id, "batch_aaa")
    led.collect(
        u1,
        [Outcome(f"row-{i}", "ok", "positive", prompt_tokens=15, completion_tokens=1) for i in range(3)]
        + [Outcome("row-5", "retry", error_code="server_error")],
    )
    _submitted(led, u2.id, "batch_bbb")
    led.collect(u2, [Outcome("row-5", "failed", error_code="invalid_output")])
    led.set_job(
        JOB,
        status="done",
        report={
            "rows": 6,
            "succeeded": 5,
            "failed": 1,
            "rejected_rows": 0,
            "cost_usd": 0.007,
            "cost_sync_all_rows_usd": 0.02,
            "saving_pct": 65.0,
            "answered_from_cache": 1,
            "requests_sent": 4,
        },
    )
    led.close()
    return path


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_jobs_app(make_ledger(tmp_path)), base_url="http://127.0.0.1:8001")


def test_jobs_list_and_detail(client: TestClient) -> None:
    jobs = client.get("/api/jobs").json()["jobs"]
    assert [(j["id"], j["status"], j["rows"], j["succeeded"], j["failed"], j["cost_usd"]) for j in jobs] == [
        (JOB, "done", 6, 5, 1, 0.007)
    ]
    d = client.get(f"/api/jobs/{JOB}").json()
    assert [(u["round"], u["state"], u["batch_id"], u["batch_url"]) for u in d["units"]] == [
        (1, "collected", "batch_aaa", "http://127.0.0.1:8000/ui/batches/batch_aaa"),
        (2, "collected", "batch_bbb", "http://127.0.0.1:8000/ui/batches/batch_bbb"),
    ]
    assert d["summary"]["succeeded"] == 3 and d["summary"]["failed_by_code"] == {"invalid_output": 1}
    assert d["estimate"]["plan"]["cache_hits"] == 1
    assert d["sample"]["columns"] == ["tweet_id", "text", "label", "outcome"] and len(d["sample"]["rows"]) == 6
    assert client.get("/api/jobs/nope").status_code == 404


def test_pages_and_assets(client: TestClient) -> None:
    assert "jobs.js" in client.get("/").text
    assert client.get(f"/jobs/{JOB}").status_code == 200
    assert client.get("/static/jobs.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/dashboard.py").status_code == 404


def test_only_loopback_host_names_are_answered(tmp_path: Path) -> None:
    app = create_jobs_app(make_ledger(tmp_path))
    assert TestClient(app, base_url="http://evil.example:8001").get("/api/jobs").status_code == 403
    assert TestClient(app, base_url="http://localhost:8001").get("/api/jobs").status_code == 200


def test_no_ledger_yet(tmp_path: Path) -> None:
    c = TestClient(create_jobs_app(tmp_path / "missing.sqlite3"), base_url="http://127.0.0.1")
    r = c.get("/api/jobs")
    assert r.status_code == 404 and "run a job first" in r.json()["error"]["message"]


def test_batch_links() -> None:
    assert batch_url("https://api.openai.com/v1", "batch_1") == "https://platform.openai.com/batches/batch_1"
    assert batch_url("embedded", "batch_1") is None
    assert batch_url("http://10.0.0.5:8000/v1", None) is None


def test_output_sample_reads_jsonl_and_parquet(tmp_path: Path) -> None:
    import polars as pl

    (tmp_path / "o.jsonl").write_text('{"a": 1, "e": [0.1, 0.2]}\n{"a": 2, "b": "x"}\n')
    assert output_sample(tmp_path / "o.jsonl") == {
        "columns": ["a", "e", "b"],
        "rows": [["1", "[0.1,0.2]", None], ["2", None, "x"]],
    }
    pl.DataFrame({"a": list(range(20))}).write_parquet(tmp_path / "o.parquet")
    assert len(output_sample(tmp_path / "o.parquet")["rows"]) == 10  # type: ignore[index]
    assert output_sample(tmp_path / "none.csv") is None
