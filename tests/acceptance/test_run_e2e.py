"""`coldbatch run` end to end, as a user runs it: the CLI in a subprocess against `coldbatch serve --engine echo`
in another, each server on a free loopback port with its own data dir, stopped by its pid at the end.

Acceptance criteria covered here:
- the whole of Tweets.csv (14,640 rows) with injected per-request failures: every row in OUTPUT, in input
  order, joined to the right response; failures retried, and finally succeeded or reported;
- retry by error class: permanent 4xx are reported with their message and never retried; a job whose
  requests all fail transiently ends at --max-attempts with every error reported; an expired batch keeps
  its finished results and only its unfinished requests are sent again;
- --max-cost refuses when the estimate exceeds it, and nothing reaches the server;
- housekeeping deletes the uploaded input and the result files after collection, unless --keep-remote-files.
"""

from __future__ import annotations

import collections
import csv
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from _runner_support import TWEETS, coldbatch, echo_server, job_id_from, read_csv

from coldbatch.engines.echo import _answer_text

pytestmark = pytest.mark.slow
needs_tweets = pytest.mark.skipif(not TWEETS.is_file(), reason=f"{TWEETS} is not there")
LABELS = "negative,neutral,positive"


def _small_csv(path: Path, rows: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for i in range(1, rows + 1):
            w.writerow([f"k{i}", f'row {i}: the flight was {["late", "fine", "great"][i % 3]}, "ok"'])
    return path


def _requests(home: Path, job: str) -> dict[str, dict[str, Any]]:
    """custom_id -> request line, from the job's prepared shards."""
    out: dict[str, dict[str, Any]] = {}
    for shard in sorted((home / "jobs" / job / "shards").glob("*.jsonl")):
        for line in shard.read_bytes().splitlines():
            req = orjson.loads(line)
            out[req["custom_id"]] = req
    return out


def _units(home: Path, job: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{home / 'ledger.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM units WHERE job_id = ? ORDER BY id", (job,))]
    finally:
        db.close()


def _one_batch_per_unit(batches: list[dict[str, Any]], units: list[dict[str, Any]]) -> None:
    tags = collections.Counter((b["metadata"]["coldbatch_unit"], b["metadata"]["coldbatch_try"]) for b in batches)
    assert all(n == 1 for n in tags.values()), tags
    assert sorted(tags) == sorted((str(u["id"]), str(u["try"])) for u in units)


# -- (a) the whole Tweets.csv, with injected failures ----------------------------------------------------------
@needs_tweets
def test_tweets_end_to_end_every_row_in_order_joined_to_its_answer_with_failures_retried(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "tweets-out.csv"
    with echo_server(tmp_path / "srv", failure_rate=0.1) as srv:
        res = coldbatch(
            home,
            "run",
            "--mode",
            "batch",
            TWEETS,
            "--out",
            out,
            "-m",
            "gpt-4o-mini",
            "-p",
            "Sentiment of this tweet: {text}",
            "--id-column",
            "tweet_id",
            "--on-duplicate-id",
            "suffix",
            "--labels",
            LABELS,
            "--max-requests",
            "5000",
            "--base-url",
            srv.base_url,
            "--yes",
            "--poll-interval",
            "0.2",
            "--max-attempts",
            "3",
            timeout=240,
        )
        assert res.returncode in (0, 4), res.stderr[-3000:]  # 4: rows left failing after 3 attempts (issue 16)
        job = job_id_from(res.stderr)
        batches = srv.batches(job)
        files = srv.files()
    assert "14,640 rows → " in res.stdout

    rows = read_csv(out)
    with TWEETS.open(newline="", encoding="utf-8") as fh:
        inp = list(csv.DictReader(fh))
    assert len(rows) == len(inp) == 14_640
    assert res.returncode == (4 if any(r["error"] for r in rows) else 0)  # the exit code says so (issue 16)
    # every row, in input order, with its input columns untouched
    assert [r["tweet_id"] for r in rows] == [r["tweet_id"] for r in inp]
    assert [r["text"] for r in rows] == [r["text"] for r in inp]
    assert list(rows[0])[: len(inp[0])] == list(inp[0])

    reqs = _requests(home, job)
    by_code: collections.Counter[str] = collections.Counter()
    for i, r in enumerate(rows):
        cid = r["custom_id"]
        assert cid == r["tweet_id"] or cid.startswith(r["tweet_id"] + "~"), (i, cid)
        body = reqs[cid]["body"]
        assert body["messages"][-1]["content"] == "Sentiment of this tweet: " + r["text"], i  # the row's own request
        attempts = int(r["attempts"])
        assert 1 <= attempts <= 3
        if r["error"]:
            by_code[r["error"].split(":")[0]] += 1
            assert r["response"] == "" and r["label"] == "" and attempts == 3, r  # gave up after the last attempt
        else:
            expected = _answer_text(body)  # what the echo engine answers to exactly this request
            assert r["response"] == expected, (i, r["response"], expected)
            assert r["label"] == orjson.loads(expected)["label"] and r["label"] in LABELS.split(",")
            assert int(r["prompt_tokens"]) > 0 and int(r["completion_tokens"]) > 0
    assert len({r["custom_id"] for r in rows}) == 14_640
    attempts_seen = collections.Counter(int(r["attempts"]) for r in rows)
    assert attempts_seen[2] > 0, "failed rows must have been retried"
    assert set(by_code) <= {"engine_error"}, by_code  # the only failures injected; each one reported
    assert attempts_seen[3] >= by_code["engine_error"]
    assert f"{by_code['engine_error']:,} failed" in res.stdout

    units = _units(home, job)
    # each distinct question is sent once (213 tweets repeat another's text): dedup, not loss
    distinct = len({r["text"] for r in inp})
    assert distinct < 14_640
    assert sum(u["requests"] for u in units if u["round"] == 1) == distinct
    assert max(u["round"] for u in units) == 3
    _one_batch_per_unit(batches, units)
    assert files == [], "housekeeping: every uploaded and result file is deleted after collection"


# -- (b) --max-cost -----------------------------------------------------------------------------------------
def test_max_cost_refuses_before_anything_is_sent(tmp_path: Path) -> None:
    data = _small_csv(tmp_path / "rows.csv", 50)
    with echo_server(tmp_path / "srv") as srv:
        res = coldbatch(
            tmp_path / "home",
            "run",
            "--mode",
            "batch",
            data,
            "--out",
            tmp_path / "out.csv",
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--max-cost",
            "0.0000001",
            "--base-url",
            srv.base_url,
            "--yes",
        )
        assert res.returncode != 0
        assert "exceeds --max-cost" in res.stderr and "nothing was sent" in res.stderr
        assert srv.batches() == [] and srv.files() == []
        # resuming the job refuses again: the cap is part of the job
        again = coldbatch(tmp_path / "home", "resume", job_id_from(res.stderr), "--yes")
        assert again.returncode != 0 and "exceeds --max-cost" in again.stderr
        assert srv.batches() == [] and srv.files() == []
    assert not (tmp_path / "out.csv").exists()


def test_max_cost_with_an_unpriced_model_refuses_rather_than_guessing(tmp_path: Path) -> None:
    data = _small_csv(tmp_path / "rows.csv", 5)
    with echo_server(tmp_path / "srv") as srv:
        res = coldbatch(
            tmp_path / "home",
            "run",
            "--mode",
            "batch",
            data,
            "--out",
            tmp_path / "out.csv",
            "-m",
            "no-such-model-xyz",
            "-p",
            "Say {text}",
            "--max-cost",
            "100",
            "--base-url",
            srv.base_url,
            "--yes",
        )
        assert res.returncode != 0 and "price" in res.stderr, res.stderr
        assert srv.batches() == [] and srv.files() == []


# -- (c) housekeeping ---------------------------------------------------------------------------------------
def test_housekeeping_deletes_remote_files_unless_keep_remote_files(tmp_path: Path) -> None:
    data = _small_csv(tmp_path / "rows.csv", 120)
    common = [
        "-m",
        "gpt-4o-mini",
        "-p",
        "Say {text}",
        "--max-requests",
        "50",
        "--yes",
        "--poll-interval",
        "0.2",
        "--mode",
        "batch",
    ]
    with echo_server(tmp_path / "srv", failure_rate=0.2) as srv:
        res = coldbatch(
            tmp_path / "home", "run", data, "--out", tmp_path / "a.csv", "--base-url", srv.base_url, *common
        )
        assert res.returncode in (0, 4), res.stderr[-3000:]  # 4: some rows still failing after 3 attempts
        assert srv.files() == []
        assert len(srv.batches(job_id_from(res.stderr))) >= 3

        res = coldbatch(
            tmp_path / "home",
            "run",
            "--mode",
            "batch",
            data,
            "--out",
            tmp_path / "b.csv",
            "--base-url",
            srv.base_url,
            "--keep-remote-files",
            *common,
        )
        assert res.returncode in (0, 4), res.stderr[-3000:]
        job = job_id_from(res.stderr)
        files = {f["id"]: f for f in srv.files()}
        batches = srv.batches(job)
    units = _units(tmp_path / "home", job)
    _one_batch_per_unit(batches, units)
    kept = {fid for b in batches for fid in (b["input_file_id"], b["output_file_id"], b["error_file_id"]) if fid}
    assert kept == set(files), "every input and result file stays, and nothing else is there"
    assert sorted(f["filename"] for f in files.values() if f["purpose"] == "batch") == sorted(
        f"{job}.u{u['id']}.jsonl" for u in units
    )
    assert read_csv(tmp_path / "a.csv")[0].keys() == read_csv(tmp_path / "b.csv")[0].keys()


# -- (d) permanent errors -------------------------------------------------------------------------------------
def test_permanent_4xx_errors_are_reported_with_their_message_and_not_retried(tmp_path: Path) -> None:
    """Every request carries `echo_fail: 400` (the echo fixture answers HTTP 400 to it).

    --body-json applies to every row, so all rows fail alike; rows that fail differently within one batch
    (400 next to 500 next to success) are covered by tests/unit/test_runner.py with a scripted provider.
    """
    data = _small_csv(tmp_path / "rows.csv", 60)
    home = tmp_path / "home"
    with echo_server(tmp_path / "srv") as srv:
        res = coldbatch(
            home,
            "run",
            "--mode",
            "batch",
            data,
            "--out",
            tmp_path / "out.csv",
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--body-json",
            '{"echo_fail": 400}',
            "--max-requests",
            "25",
            "--max-attempts",
            "3",
            "--yes",
            "--poll-interval",
            "0.2",
            "--base-url",
            srv.base_url,
        )
        assert res.returncode == 5, res.stderr[-3000:]  # finished, OUTPUT written, no row answered (issue 16)
        job = job_id_from(res.stderr)
        batches = srv.batches(job)
    rows = read_csv(tmp_path / "out.csv")
    assert len(rows) == 60
    for r in rows:
        assert r["response"] == "" and r["attempts"] == "1", r
        assert r["error"] == "echo_fail: echo engine: failure requested by the request body (echo_fail=400)", r
    units = _units(home, job)
    assert [u["round"] for u in units] == [1, 1, 1], "a permanent error is never sent again"
    _one_batch_per_unit(batches, units)
    assert "0 succeeded, 60 failed (by distinct request: {'echo_fail': 60})" in res.stdout
    assert "0 requests retried over 1 round(s)" in res.stdout


# -- (e) transient errors until the last attempt ---------------------------------------------------------------
def test_requests_that_always_fail_transiently_end_at_max_attempts_with_their_error(tmp_path: Path) -> None:
    data = _small_csv(tmp_path / "rows.csv", 40)
    home = tmp_path / "home"
    with echo_server(tmp_path / "srv") as srv:
        res = coldbatch(
            home,
            "run",
            "--mode",
            "batch",
            data,
            "--out",
            tmp_path / "out.jsonl",
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--body-json",
            '{"echo_fail": 503}',
            "--max-attempts",
            "3",
            "--yes",
            "--poll-interval",
            "0.2",
            "--base-url",
            srv.base_url,
        )
        assert res.returncode == 5, res.stderr[-3000:]  # finished, OUTPUT written, no row answered (issue 16)
        job = job_id_from(res.stderr)
        batches = srv.batches(job)
        assert srv.files() == []
    rows = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [r["id"] for r in rows] == [f"k{i}" for i in range(1, 41)]
    for r in rows:
        assert r["attempts"] == 3 and r["response"] is None, r
        assert r["error"].startswith("echo_fail: ") and "echo_fail=503" in r["error"], r
    units = _units(home, job)
    assert [(u["round"], u["requests"]) for u in units] == [(1, 40), (2, 40), (3, 40)]
    _one_batch_per_unit(batches, units)
    assert "40 requests retried over 3 round(s)" in res.stdout


# -- (f) expired batches ---------------------------------------------------------------------------------------
def test_an_expired_batch_keeps_its_finished_results_and_only_the_rest_is_sent_again(tmp_path: Path) -> None:
    """A 2-second completion window (a coldbatch serve extension) on ~6 s of work (256 requests a second): the
    batch expires part done. (Validation happens inside the window: with a 1-second window a loaded CI machine
    once expired the batch before a single request had run.)"""
    data = _small_csv(tmp_path / "rows.csv", 1600)
    home = tmp_path / "home"
    with echo_server(tmp_path / "srv", latency=1.0, extra=["--allow-short-windows"]) as srv:
        res = coldbatch(
            home,
            "run",
            "--mode",
            "batch",
            data,
            "--out",
            tmp_path / "out.csv",
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--completion-window",
            "2s",
            "--max-attempts",
            "8",
            "--keep-remote-files",
            "--yes",
            "--no-dedup",
            "--poll-interval",
            "0.2",
            "--base-url",
            srv.base_url,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        job = job_id_from(res.stderr)
        batches = {b["id"]: b for b in srv.batches(job)}
        units = _units(home, job)

        def ids(file_id: str | None) -> list[str]:
            lines = srv.content(file_id).splitlines() if file_id else []
            return [orjson.loads(x)["custom_id"] for x in lines if x.strip()]

        first = batches[units[0]["batch_id"]]
        assert first["status"] == "expired"
        done_first = ids(first["output_file_id"])
        assert 0 < len(done_first) < 1600
        previous_errors = ids(first["error_file_id"])
        assert sorted(previous_errors + done_first) == sorted(f"row-{i}" for i in range(1, 1601))
        for u in units[1:]:  # each later round sends exactly what the previous one left unfinished
            b = batches[u["batch_id"]]
            assert sorted(ids(b["input_file_id"])) == sorted(previous_errors)
            previous_errors = ids(b["error_file_id"])
        assert previous_errors == []
    rows = read_csv(tmp_path / "out.csv")
    assert all(r["error"] == "" and r["response"] == f"Say {r['text']}" for r in rows)
    finished = set(done_first)  # answered in round 1: kept, never sent again
    assert all((r["attempts"] == "1") == (r["custom_id"] in finished) for r in rows)


# -- structured outputs (--schema) ----------------------------------------------------------------------------
def test_schema_answers_become_columns_and_invalid_ones_are_reported_with_their_text(tmp_path: Path) -> None:
    data = _small_csv(tmp_path / "rows.csv", 30)
    good = tmp_path / "sentiment.json"
    good.write_text(
        '{"type": "object", "properties": {"sentiment": {"type": "string", "enum": '
        '["late", "fine", "great"]}}, "required": ["sentiment"], "additionalProperties": false}'
    )
    strict = tmp_path / "strict.json"  # the echo fixture answers only the enum field: "reason" is always missing
    strict.write_text(
        '{"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["late", "fine"]},'
        ' "reason": {"type": "string"}}, "required": ["sentiment", "reason"]}'
    )
    with echo_server(tmp_path / "srv") as srv:
        ok = coldbatch(
            tmp_path / "home",
            "run",
            data,
            "--out",
            tmp_path / "ok.csv",
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--schema",
            good,
            "--yes",
            "--poll-interval",
            "0.2",
            "--base-url",
            srv.base_url,
            "--mode",
            "batch",
        )
        bad = coldbatch(
            tmp_path / "home",
            "run",
            data,
            "--out",
            tmp_path / "bad.csv",
            "-m",
            "gpt-4o-mini",
            "-p",
            "Say {text}",
            "--schema",
            strict,
            "--yes",
            "--poll-interval",
            "0.2",
            "--base-url",
            srv.base_url,
            "--mode",
            "batch",
        )
    assert ok.returncode == 0 and bad.returncode == 5, (ok.stderr[-2000:], bad.stderr[-2000:])  # bad: none valid
    rows = read_csv(tmp_path / "ok.csv")
    assert len(rows) == 30 and all(r["sentiment"] in ("late", "fine", "great") and r["error"] == "" for r in rows)
    rows = read_csv(tmp_path / "bad.csv")
    assert all(r["error"].startswith("invalid_output: ") and r["response"].startswith('{"sentiment"') for r in rows)
    assert all(r["attempts"] == "2" and r["sentiment"] == "" for r in rows)  # asked again once, then reported
