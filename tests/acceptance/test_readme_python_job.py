"""README's Python job example, run as written (issue 11: a Python user runs, resumes and collects a job
in at most 10 lines), against the echo fixture server: only its base URL is replaced by the local one."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _runner_support import REPO, echo_server, env_for

README = REPO / "README.md"
REMOTE = "https://api.openai.com/v1"


def _snippet() -> str:
    """The python block after `<!-- doctest: python-job`."""
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- doctest: python-job")
    body = text[text.index("```python\n", start) + len("```python\n") :]
    return body[: body.index("```")]


def test_the_snippet_is_at_most_ten_lines() -> None:
    lines = [line for line in _snippet().splitlines() if line.strip()]
    assert len(lines) <= 10
    assert REMOTE in _snippet() and "resume_job(" in _snippet()


def test_readme_python_job_runs_resumes_and_collects(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    with echo_server(tmp_path / "srv") as srv:
        code = _snippet().replace(REMOTE, srv.base_url)
        env = {**env_for(tmp_path / "home"), "OPENAI_API_KEY": "sk-test"}
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert "200 of 200 rows answered" in done.stdout and "(exit 0)" in done.stdout, done.stdout
    with (tmp_path / "labelled.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 200 and all(r["label"] in ("negative", "positive") for r in rows)
    jobs = [p.name for p in (tmp_path / "home" / "jobs").iterdir()]
    assert len(jobs) == 1, jobs  # resume continued that job; it made no second one


def test_job_api_in_process_report_cancel_and_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same functions in the caller's process: a typed report, a cancel of a finished job refused with
    the reason, and an input column OUTPUT would add refused before any job exists."""
    from coldbatch import JobReport, RequestSpec, UsageError, cancel_job, run_job

    monkeypatch.setenv("COLDBATCH_HOME", str(tmp_path / "home"))
    spec = RequestSpec(model="m", prompt="Tweet: {text}", labels=("negative", "positive"))
    with echo_server(tmp_path / "srv") as srv:
        clash = REPO / "examples" / "review-sentences-200.csv"  # has a `label` column
        with pytest.raises(UsageError, match="label"):
            run_job(clash, tmp_path / "x.csv", spec, base_url=srv.base_url, api_key="sk-test")
        assert not (tmp_path / "home" / "jobs").exists()
        report = run_job(
            REPO / "examples" / "airline-tweets-200.csv",
            tmp_path / "out.parquet",
            spec,
            base_url=srv.base_url,
            api_key="sk-test",
            mode="batch",
            poll_interval=0.2,
        )
        assert isinstance(report, JobReport)
        assert (report.rows, report.succeeded, report.failed, report.exit_status) == (200, 200, 0, 0)
        assert report.output == tmp_path / "out.parquet" and report.output.stat().st_size > 0
        assert report.mode == "batch" and srv.batches(report.job_id)
        with pytest.raises(UsageError, match="already finished"):
            cancel_job(report.job_id, base_url=srv.base_url, api_key="sk-test")
