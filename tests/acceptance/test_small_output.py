"""A small input's OUTPUT is joined row by row with the stdlib (runner/output_rows.py) and is byte for byte the
file the columnar writer (runner/output.py) makes from the same job: real `coldbatch run`s against
`coldbatch serve --engine echo` (failures injected, so rows are retried and some end failed), then both writers
run on the job's ledger, in CSV, TSV and JSONL."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from _runner_support import TWEETS, coldbatch, echo_server, job_id_from, read_csv

from coldbatch.builder.manifest import read_manifest
from coldbatch.errors import InputError
from coldbatch.runner import output, output_rows
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.options import RunOptions

needs_tweets = pytest.mark.skipif(not TWEETS.exists(), reason="../shared/data/airline-tweets/Tweets.csv not present")
pytestmark = [pytest.mark.slow, needs_tweets]
LABELS = "negative,neutral,positive"
#: rows a user's data really has: quotes, separators, line breaks, padding, an empty text (rejected), non-ASCII
AWKWARD = [
    {"tweet_id": "q1", "text": 'she said "no", twice'},
    {"tweet_id": "q2", "text": "line one\nline two\r\nthree"},
    {"tweet_id": "q3", "text": "  padded\tcell  "},
    {"tweet_id": "q4", "text": ""},
    {"tweet_id": "q5", "text": "naïve café 😀 ✈️"},
    {"tweet_id": "q6", "text": '""'},
]


def _tweets(path: Path, n: int | None, extra: list[dict[str, str]] = ()) -> Path:  # type: ignore[assignment]
    with TWEETS.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows = rows[:n] if n is not None else rows
    cols = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)
        w.writerows([{**rows[0], **e} for e in extra])
    return path


def _run(tmp_path: Path, srv_url: str, data: Path, *flags: str) -> tuple[Path, str, Path]:
    home, out = tmp_path / "home", tmp_path / "run-out.csv"
    res = coldbatch(home, "run", data, "--out", out, "-m", "gpt-4o-mini", "-p", "Tweet: {text}", "--mode", "batch",
                    "--base-url", srv_url, "--yes", "--poll-interval", "0.2", *flags, timeout=300)  # fmt: skip
    assert res.returncode in (0, 4), res.stderr[-3000:]  # 4: some rows failed (injected), as intended
    return home, job_id_from(res.stderr), out


def _args(lg: Ledger, home: Path, job_id: str) -> tuple[Path, Any, dict[str, Any]]:
    """The job's input, request spec and writer options, as runner/report.py passes them."""
    job = lg.job(job_id)
    assert job is not None
    opts = RunOptions.from_json(job.options, job.id)
    manifest = read_manifest(home / "jobs" / job_id / "shards")
    assert manifest is not None
    kw: dict[str, Any] = {
        "fmt": opts.fmt,
        "max_line_bytes": min(opts.limits.max_line_bytes, opts.limits.max_bytes - 1),
        "shards": manifest["shards"],
        "prefix": opts.output_prefix,
    }
    return Path(job.input_path), opts.request_spec(), kw


def _both(home: Path, job_id: str, out: Path) -> tuple[dict[str, Any], bytes, dict[str, Any], bytes]:
    """(counts, bytes) of the columnar writer and of the row writer, given the job's own arguments."""
    lg = Ledger(home / "ledger.sqlite3")
    try:
        inp, spec, kw = _args(lg, home, job_id)
        a, b = out.with_name("columnar" + out.suffix), out.with_name("rows" + out.suffix)
        ca = output.write_output(lg, job_id, inp, a, spec, **kw)
        cb = output_rows.write_output_rows(lg, job_id, inp, b, spec, **kw)
        return ca, a.read_bytes(), cb, b.read_bytes()
    finally:
        lg.close()


def test_all_tweets_labelled_with_retries_and_failures_in_every_text_format(tmp_path: Path) -> None:
    """14,640 tweets (3.4 MB: a small input), --labels (confidence column), repeated ids renamed, a prefix."""
    data = _tweets(tmp_path / "tweets.csv", None)
    assert output_rows.takes_small_path(data, tmp_path / "o.csv", None, False)
    with echo_server(tmp_path / "srv", failure_rate=0.1) as srv:
        flags = ["--labels", LABELS, "--id-column", "tweet_id", "--on-duplicate-id", "suffix", "--max-attempts", "2"]
        home, job, run_out = _run(tmp_path, srv.base_url, data, *flags, "--output-prefix", "cb_")
    rows = read_csv(run_out)
    assert len(rows) == 14_640
    assert {r["cb_attempts"] for r in rows} >= {"1", "2"}, "some rows were retried"
    assert any(r["cb_error"] for r in rows) and any(r["cb_label"] for r in rows)
    for ext in ("csv", "tsv", "jsonl"):
        ca, a, cb, b = _both(home, job, tmp_path / f"o.{ext}")
        assert cb == ca and ca["rows"] == 14_640 and ca["failed"] > 0
        assert b == a, ext
        if ext == "csv":
            assert run_out.read_bytes() == a  # what the run itself wrote


def test_a_thousand_tweets_and_awkward_rows_with_unanswered_ones(tmp_path: Path) -> None:
    """Quotes, line breaks, padding, an empty text (rejected before sending), failures left after one attempt."""
    data = _tweets(tmp_path / "tweets.csv", 1000, AWKWARD)
    with echo_server(tmp_path / "srv", failure_rate=0.2) as srv:
        home, job, run_out = _run(tmp_path, srv.base_url, data, "--max-attempts", "1", "--no-dedup")
    rows = read_csv(run_out)
    assert [r["text"] for r in rows[-len(AWKWARD) :]] == [e["text"] for e in AWKWARD]
    assert rows[-3]["error"].startswith("empty_input") and rows[-3]["custom_id"] == ""
    for ext in ("csv", "tsv", "jsonl"):
        ca, a, cb, b = _both(home, job, tmp_path / f"o.{ext}")
        assert cb == ca and ca["rejected"] == 1 and ca["failed"] > 0
        assert b == a, ext
        if ext == "csv":
            assert run_out.read_bytes() == a


def test_an_input_changed_since_the_job_is_refused_by_the_row_writer_too(tmp_path: Path) -> None:
    data = _tweets(tmp_path / "tweets.csv", 50)
    with echo_server(tmp_path / "srv") as srv:
        home, job, _ = _run(tmp_path, srv.base_url, data)
    text = data.read_text(encoding="utf-8")
    data.write_text(text.replace("@VirginAmerica", "@VirginAmerica!", 1), encoding="utf-8")
    out = tmp_path / "o.csv"
    out.write_text("the OUTPUT of the run\n")
    lg = Ledger(home / "ledger.sqlite3")
    try:
        inp, spec, kw = _args(lg, home, job)
        with pytest.raises(InputError, match=r"changed since the job prepared it \(the requests of shard 1 differ"):
            output_rows.write_output_rows(lg, job, inp, out, spec, **kw)
    finally:
        lg.close()
    assert out.read_text() == "the OUTPUT of the run\n"  # untouched, and nothing half-written beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".o.csv")) == []
