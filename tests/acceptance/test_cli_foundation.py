"""The foundation as a user meets it: `coldbatch prepare | validate | estimate` on real and awkward data."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from coldbatch.cli import main

# CI clones the repository with shared/ beside it: ../shared relative to the repository root.
TWEETS = Path(__file__).resolve().parents[2].parent / "shared/data/airline-tweets/Tweets.csv"
needs_tweets = pytest.mark.skipif(not TWEETS.is_file(), reason=f"{TWEETS} is not there")
PROMPT = "Sentiment of this tweet: {text}"


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def requests_in(folder: Path) -> list[dict[str, Any]]:
    m = manifest(folder)
    return [json.loads(line) for s in m["shards"] for line in (folder / s["path"]).read_text().splitlines()]


@pytest.fixture(scope="module")
def tweets_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tweets") / "out"
    result = cli(
        "prepare",
        TWEETS,
        "--out",
        out,
        "-m",
        "gpt-4o-mini",
        "-p",
        PROMPT,
        "--id-column",
        "tweet_id",
        "--on-duplicate-id",
        "suffix",
        "--max-requests",
        "5000",
    )
    assert result.exit_code == 0, result.output
    assert "14,640 rows → 14,640 requests in 3 shard(s)" in result.stdout
    assert "155 repeated id(s) sent as 'ID~n'" in result.stdout
    return out


@needs_tweets
def test_prepare_tweets_refuses_repeated_ids_by_default_and_lists_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("prepare", TWEETS, "--out", out, "-m", "gpt-4o-mini", "-p", PROMPT, "--id-column", "tweet_id")
    assert result.exit_code == 1
    assert "155 row(s) repeat an earlier id in column 'tweet_id'" in result.stderr
    assert "row 12041: id '570308309682675712' repeats row 11880" in result.stderr
    assert "… and 135 more" in result.stderr
    assert "--on-duplicate-id suffix" in result.stderr
    assert not out.exists()


@needs_tweets
def test_prepare_tweets_with_suffixed_ids_gives_valid_shards(tweets_out: Path) -> None:
    m = manifest(tweets_out)
    assert m["totals"] == {
        "rows": 14_640,
        "requests": 14_640,
        "bytes": sum(s["bytes"] for s in m["shards"]),
        "shards": 3,
        "rejected": 0,
        "renamed_ids": 155,
    }
    for s in m["shards"]:
        blob = (tweets_out / s["path"]).read_bytes()
        assert (s["requests"], s["bytes"], s["sha256"]) == (
            blob.count(b"\n"),
            len(blob),
            hashlib.sha256(blob).hexdigest(),
        )
        assert s["requests"] <= 5000 and s["model"] == "gpt-4o-mini"
    reqs = requests_in(tweets_out)
    ids = [r["custom_id"] for r in reqs]
    assert len(set(ids)) == 14_640
    assert ids[12040] == "570308309682675712~2" and ids[11879] == "570308309682675712"
    assert sum("~" in i for i in ids) == 155
    assert reqs[0]["body"]["messages"] == [
        {"role": "user", "content": "Sentiment of this tweet: @VirginAmerica What @dhepburn said."}
    ]
    result = cli("validate", tweets_out)
    assert result.exit_code == 0, result.output
    assert "3 file(s), 14,640 request(s): valid" in result.stdout


@needs_tweets
def test_prepare_tweets_twice_is_byte_identical(tweets_out: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    cli(
        "prepare",
        TWEETS,
        "--out",
        again,
        "-m",
        "gpt-4o-mini",
        "-p",
        PROMPT,
        "--id-column",
        "tweet_id",
        "--on-duplicate-id",
        "suffix",
        "--max-requests",
        "5000",
    )
    files = sorted(p.name for p in tweets_out.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    assert all((tweets_out / f).read_bytes() == (again / f).read_bytes() for f in files)


@needs_tweets
def test_estimate_tweets_json_reports_the_batch_saving(tweets_out: Path) -> None:
    result = cli("estimate", tweets_out, "--expected-output-tokens", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["totals"]["batch_only_saving_pct"] == 50.0 and data["totals"]["saving_pct"] >= 50.0
    assert data["totals"]["requests"] == 14_640 and data["totals"]["output_tokens"] == 3 * 14_640
    assert data["models"][0]["exact_tokens"] is True


def test_missing_template_column_is_a_usage_error_naming_the_columns(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,hello\n")
    result = cli("prepare", src, "--out", tmp_path / "out", "-m", "m", "-p", "Classify {tweet} by {lang}")
    assert result.exit_code == 2
    assert "'tweet', 'lang'" in result.stderr and "available columns: id, text" in result.stderr
    assert not (tmp_path / "out").exists()


def test_awkward_rows_are_sent_repaired_or_reported(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(
        b'id,text\r\n1,"She said ""hi"",\nthen left"\r\n2,\r\n3,caf\xe9 \xff\r\n4,'
        + b"w" * 5000
        + b'\r\n5,"\xf0\x9f\x98\x80 \\ done"\r\n'
    )
    out = tmp_path / "out"
    result = cli(
        "prepare", src, "--out", out, "-m", "m", "-p", "{text}", "--id-column", "id", "--max-line-bytes", "2000"
    )
    assert result.exit_code == 0, result.output
    assert "2 row(s) not sent" in result.stdout and "1 cell(s) were not valid UTF-8" in result.stdout
    sent = {r["custom_id"]: r["body"]["messages"][0]["content"] for r in requests_in(out)}
    assert sent == {"1": 'She said "hi",\nthen left', "3": "caf\ufffd \ufffd", "5": "😀 \\ done"}
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["code"]) for r in rejects] == [(2, "empty_input"), (4, "line_too_large")]
    m = manifest(out)
    assert (m["totals"]["rows"], m["totals"]["requests"], m["totals"]["rejected"]) == (5, 3, 2)
    assert [(c["row"], c["column"]) for c in m["repaired_cells"]] == [(3, "text")]
    assert cli("validate", out).exit_code == 0


def test_shards_respect_max_requests_and_max_bytes(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"row {i} " + "x" * (i % 50)}) + "\n" for i in range(100)))
    out = tmp_path / "out"
    result = cli(
        "prepare", src, "--out", out, "-m", "m", "-p", "{text}", "--max-requests", "9", "--max-bytes", "1300", "--json"
    )
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    assert m == manifest(out)
    assert sum(s["requests"] for s in m["shards"]) == 100
    assert all(s["requests"] <= 9 and s["bytes"] <= 1300 for s in m["shards"])
    # both limits bound somewhere: a short shard that is byte-full, and a shard that is request-full
    assert any(s["requests"] < 9 and s["bytes"] > 1300 - 200 for s in m["shards"][:-1])
    assert any(s["requests"] == 9 for s in m["shards"])


def _broken_file(tmp_path: Path) -> Path:
    good = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    lines = [
        json.dumps(good),
        "{oops",
        json.dumps({**good, "method": "GET"}),
        json.dumps(good),
        json.dumps({**good, "custom_id": "b", "body": {**good["body"], "stream": True}}),
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validate_reports_every_error_as_file_line_code_message(tmp_path: Path) -> None:
    path = _broken_file(tmp_path)
    result = cli("validate", path)
    assert result.exit_code == 1
    out = result.stdout.splitlines()
    assert out[0].startswith(f"{path}:2: invalid_json_line: This line is not parseable as valid JSON (")
    assert out[1:] == [
        f"{path}:3: duplicate_custom_id: The custom_id 'a' is a duplicate of the request on line 1. [custom_id]",
        f"{path}:3: invalid_request: Invalid method 'GET': the Batch API only accepts 'POST'. [method]",
        f"{path}:4: duplicate_custom_id: The custom_id 'a' is a duplicate of the request on line 1. [custom_id]",
        f"{path}:5: streaming_unsupported: Streaming is not supported in the Batch API. [body.stream]",
    ]
    assert "1 file(s), 4 request(s): invalid (5 error(s) in 1 file(s))" in result.stderr


def test_validate_caps_the_list_and_counts_the_rest(tmp_path: Path) -> None:
    result = cli("validate", _broken_file(tmp_path), "--max-errors", "2")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 3
    assert result.stdout.splitlines()[-1].endswith("batch.jsonl: … and 3 more error(s)")


def test_validate_json_report(tmp_path: Path) -> None:
    path = _broken_file(tmp_path)
    result = cli("validate", path, "--json", "--max-errors", "2")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    (f,) = data["files"]
    assert (f["file"], f["requests"], f["total_errors"], len(f["errors"])) == (str(path), 4, 5, 2)
    assert f["bytes"] == path.stat().st_size
    assert f["errors"][0] == {
        "file": str(path),
        "line": 2,
        "code": "invalid_json_line",
        "param": None,
        "message": f["errors"][0]["message"],
    }


@pytest.mark.parametrize(
    "args",
    [
        ["validate"],
        ["validate", "missing.jsonl"],
        ["validate", "x", "--max-errors", "0"],
        ["validate", "x", "--endpoint", "/v1/nope"],
        ["prepare", "x"],
        ["estimate", "x", "-p", "{text}"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").write_text("id,text\n1,a\n")
    result = cli(*args)
    assert result.exit_code == 2, result.output


def test_validate_a_clean_file_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(
        json.dumps(
            {
                "custom_id": "a",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": "hi"},
            }
        )
        + "\n"
    )
    result = cli("validate", path, "--endpoint", "/v1/embeddings", "--models", "text-embedding-3-small, x")
    assert result.exit_code == 0, result.output
    assert "1 file(s), 1 request(s): valid" in result.stdout


def test_estimate_a_dataset_prints_the_table_and_json(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,Hello\n2,Hello\n")
    args = ["estimate", src, "-m", "gpt-4o-mini", "-p", "{text}", "--max-tokens", "10"]
    data = json.loads(cli(*args, "--json").stdout)
    assert data["totals"]["input_tokens"] == 16 and data["totals"]["output_tokens"] == 20
    assert data["totals"]["batch_only_saving_pct"] == 50.0 and data["totals"]["saving_pct"] >= 50.0
    text = cli(*args)
    assert text.exit_code == 0
    # two rows, one question: dedup halves what is sent on top of the batch discount
    assert data["totals"]["distinct_requests"] == 1 and data["totals"]["saving_pct"] == 75.0
    assert "gpt-4o-mini" in text.stdout and "(75.0%; batch price alone 50.0%)" in text.stdout
    unknown = json.loads(cli("estimate", src, "-m", "my-llama", "-p", "{text}", "--json").stdout)
    assert unknown["totals"]["saving_pct"] is None and unknown["totals"]["batch_cost_usd"] is None
    assert any("no price for model 'my-llama'" in w for w in unknown["warnings"])
    shown = cli("estimate", src, "-m", "my-llama", "-p", "{text}")
    assert "n/a" in shown.stdout and "warning: no price for model 'my-llama'" in shown.stderr


@pytest.mark.slow
@needs_tweets
def test_the_installed_command_prepares_and_validates_tweets(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = [sys.executable, "-m", "coldbatch"]
    prep = subprocess.run(
        [
            *run,
            "prepare",
            str(TWEETS),
            "--out",
            str(out),
            "-m",
            "gpt-4o-mini",
            "-p",
            PROMPT,
            "--id-column",
            "tweet_id",
            "--on-duplicate-id",
            "suffix",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert prep.returncode == 0, prep.stderr
    check = subprocess.run(
        [*run, "validate", str(out), "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["files"][0]["requests"] == 14_640
