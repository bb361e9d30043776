"""`coldbatch run --provider gemini` end to end, as a user runs it: the CLI in a subprocess, the official
`google-genai` SDK inside it, against the Gemini batch-mode stand-in (`coldbatch.testing.gemini`) that this test
serves on a loopback port and inspects afterwards.

Covered: every row answered with the label its text gets from the echo rule, each distinct request sent once,
the remote files cleaned up; a batch that expires (48 h on Gemini, no results at all) is sent again; kill -9
while the upload or the batch create is in flight (the object exists, the ledger does not know it), then
`resume`: the file and the batch are found again by name, nothing is uploaded, created or answered twice.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from _runner_support import coldbatch, env_for, job_id_from, read_csv

from coldbatch.engines.echo import _answer_text
from coldbatch.testing.gemini import GeminiStandIn

pytestmark = pytest.mark.slow
LABELS = "negative,neutral,positive"
SYSTEM = "You label airline tweets."


def _dataset(path: Path, rows: int = 60) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id,text\n")
        for i in range(1, rows + 1):
            fh.write(f"g{i},tweet {i % 25}: the flight was {['late', 'fine', 'great'][i % 3]}\n")
    return path


def _args(data: Path, out: Path, url: str, key: str, *more: str) -> list[str]:
    return [
        "run",
        str(data),
        "--out",
        str(out),
        "--provider",
        "gemini",
        "-m",
        "gemini-2.5-flash",
        "-p",
        "Tweet: {text}",
        "-s",
        SYSTEM,
        "--labels",
        LABELS,
        "--id-column",
        "id",
        "--base-url",
        url,
        "--api-key",
        key,
        "--yes",
        "--poll-interval",
        "0.1",
        *more,
    ]


def _expected_label(text: str) -> str:
    body = {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tweet: {text}"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"schema": {"properties": {"label": {"type": "string", "enum": LABELS.split(",")}}}},
        },
    }
    return str(orjson.loads(_answer_text(body))["label"])


def _check_output(out: Path, rows: int) -> None:
    got = read_csv(out)
    assert [r["id"] for r in got] == [f"g{i}" for i in range(1, rows + 1)]
    assert all(r["error"] == "" for r in got), [r for r in got if r["error"]][:3]
    assert [r["label"] for r in got] == [_expected_label(r["text"]) for r in got]


def test_gemini_job_labels_every_row_sends_each_distinct_request_once_and_cleans_up(tmp_path: Path) -> None:
    stand_in = GeminiStandIn(hold=0.3)
    data, out = _dataset(tmp_path / "in.csv"), tmp_path / "out.csv"
    with stand_in.serve() as srv:
        res = coldbatch(tmp_path / "home", *_args(data, out, srv.url, stand_in.api_key), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "60 rows → " in res.stdout
    _check_output(out, 60)
    # rows repeat texts: each distinct text is one question, answered once by the stand-in
    distinct = {r["text"] for r in read_csv(out)}
    assert sum(stand_in.executed.values()) == len(distinct) and set(stand_in.executed.values()) == {1}
    assert stand_in.calls["upload"] == 1 and stand_in.calls["batch_create"] == 1
    assert stand_in.files == {}  # the input and the results file were deleted after collection


def test_an_expired_gemini_batch_is_sent_again_and_its_rows_answered(tmp_path: Path) -> None:
    stand_in = GeminiStandIn(expire=1)
    data, out = _dataset(tmp_path / "in.csv", rows=20), tmp_path / "out.csv"
    with stand_in.serve() as srv:
        res = coldbatch(tmp_path / "home", *_args(data, out, srv.url, stand_in.api_key), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    _check_output(out, 20)
    assert stand_in.calls["batch_create"] == 2  # the expired batch's requests went out once more, as round 2
    assert "over 2 round(s)" in res.stdout


@pytest.mark.parametrize("window", ["upload", "create"])
def test_kill_9_while_the_call_is_in_flight_then_resume_finds_the_file_and_batch(tmp_path: Path, window: str) -> None:
    stand_in = GeminiStandIn(hold=0.2, **{f"delay_{window}": 2.0})  # type: ignore[arg-type]
    data, out, home = _dataset(tmp_path / "in.csv"), tmp_path / "out.csv", tmp_path / "home"
    counter = "upload" if window == "upload" else "batch_create"
    with stand_in.serve() as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coldbatch", *_args(data, out, srv.url, stand_in.api_key)],
            env=env_for(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while stand_in.calls[counter] == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the stand-in has stored the object and holds its answer for 2 s
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        job = job_id_from(err)
        stand_in.delay_upload = stand_in.delay_create = 0.0
        res = coldbatch(home, "resume", job, "--base-url", srv.url, "--api-key", stand_in.api_key, "--yes", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    _check_output(out, 60)
    assert stand_in.calls["upload"] == 1 and stand_in.calls["batch_create"] == 1, stand_in.calls
    assert collections.Counter(stand_in.executed.values()) == {1: len(stand_in.executed)}
    if window == "create":
        assert "adopted=True" in res.stderr
