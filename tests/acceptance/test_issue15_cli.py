"""Issue 15, item 7: what a user sees when a run fails early, when input holds control bytes, and when
`serve` is given a blank key. Real subprocesses, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _runner_support import coldbatch, env_for, job_id_from


def test_a_run_whose_input_is_refused_fails_the_job_and_resume_says_why(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "q.csv"
    data.write_bytes(b'id,text\n1,"hello\n2,world\n')  # a quote never closed
    first = coldbatch(
        home, "run", data, "--out", tmp_path / "o.csv", "-m", "gpt-4o-mini", "-p", "{text}", "--engine", "echo", "--yes"
    )
    assert first.returncode != 0 and "opens on line 2 and is never closed" in first.stderr
    job = job_id_from(first.stderr)
    listed = coldbatch(home, "jobs")
    assert job in listed.stdout and "failed" in listed.stdout.split(job, 1)[1].splitlines()[0]  # not "preparing"
    again = coldbatch(home, "resume", job, "--engine", "echo", "--yes")
    assert again.returncode != 0
    assert "failed before anything was sent" in again.stderr and "start a new `coldbatch run`" in again.stderr
    assert "never closed" in again.stderr  # the reason is kept


def test_control_bytes_from_the_input_are_escaped_in_error_messages(tmp_path: Path) -> None:
    data = tmp_path / "h.csv"
    data.write_bytes(b"id,te\x1b[2Jxt\x07\n1,hi\n")  # a header that would clear the screen and ring the bell
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "prepare",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "-m",
            "gpt-4o-mini",
            "-p",
            "{text}",
        ],
        env=env_for(tmp_path / "home"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode != 0
    assert b"\x1b" not in res.stderr and b"\x07" not in res.stderr
    assert b"te\\x1b[2Jxt\\x07" in res.stderr  # shown, escaped


def test_serve_refuses_to_start_with_a_blank_api_key(tmp_path: Path) -> None:
    try:  # before the fix this started a server that refused every request: the timeout is the failure
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "coldbatch",
                "serve",
                "--host",
                "0.0.0.0",
                "--port",
                "0",
                "--api-key",
                "",
                "--engine",
                "echo",
                "--data-dir",
                str(tmp_path / "d"),
            ],
            env=env_for(tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("serve started with a blank --api-key") from exc
    assert res.returncode != 0 and "--api-key must not be empty" in res.stderr
