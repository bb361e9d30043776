"""Labels a user can trust, on the embedded default with the real local models (chat: SmolLM2-135M;
embeddings: all-MiniLM-L6-v2), through the CLI as a user runs it:

- a label job is deterministic by default (no --temperature): two runs give the same labels;
- label jobs have a `confidence` column within [0, 1];
- `--examples` labels better than the zero-shot chat model on held-out tweets;
- a bad examples file is refused before anything is sent, naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from _runner_support import env_for

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LABELS = "negative,neutral,positive"


def _sample(tmp_path: Path, n: int, start: int = 0) -> tuple[Path, list[dict[str, str]]]:
    with (EXAMPLES / "airline-tweets-200.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[start : start + n]
    path = tmp_path / f"tweets-{start}-{n}.csv"
    _write(path, rows)
    return path, rows


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _run(tmp_path: Path, inp: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "coldbatch",
            "run",
            str(inp),
            "--out",
            str(out),
            "--prompt",
            "Tweet: {text}",
            "--labels",
            LABELS,
            "--id-column",
            "tweet_id",
            "--poll-interval",
            "0.5",
            "--yes",
            *extra,
        ],
        env=env_for(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _agreement(rows: list[dict[str, str]]) -> float:
    return sum(r["label"] == r["airline_sentiment"] for r in rows) / len(rows)


def test_label_jobs_are_deterministic_by_default_and_say_how_sure_they_are(tmp_path: Path) -> None:
    inp, _ = _sample(tmp_path, 12)
    outs = []
    for n in (1, 2):  # --no-dedup: no cache either, so the second run asks the model again
        out = tmp_path / f"run{n}.csv"
        res = _run(tmp_path, inp, out, "--model", "SmolLM2-135M-Instruct", "--max-tokens", "32", "--no-dedup")
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append(_read(out))
    first, second = outs
    assert [r["label"] for r in first] == [r["label"] for r in second]
    assert [r["confidence"] for r in first] == [r["confidence"] for r in second]
    assert all(r["label"] in LABELS.split(",") for r in first)
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in first), [r["confidence"] for r in first]


def test_examples_label_held_out_tweets_better_than_zero_shot(tmp_path: Path) -> None:
    inp, rows = _sample(tmp_path, 60, start=40)  # demo tweets (never among the examples); 50 % negative
    zero = tmp_path / "zero-shot.csv"
    res = _run(tmp_path, inp, zero, "--model", "SmolLM2-135M-Instruct", "--max-tokens", "32")
    assert res.returncode == 0, res.stderr[-3000:]
    learned = tmp_path / "examples.csv"
    res = _run(tmp_path, inp, learned, "--examples", str(EXAMPLES / "airline-tweets-examples.csv"))
    assert res.returncode == 0, res.stderr[-3000:]
    got = _read(learned)
    assert [r["tweet_id"] for r in got] == [r["tweet_id"] for r in rows]
    assert all(r["label"] in LABELS.split(",") and 0 < float(r["confidence"]) <= 1 for r in got)
    majority = max(sum(r["airline_sentiment"] == x for r in rows) for x in LABELS.split(",")) / len(rows)
    assert _agreement(got) > max(majority, _agreement(_read(zero))) + 0.05, (_agreement(got), _agreement(_read(zero)))


def test_examples_that_are_rows_being_labelled_are_left_out_and_said_so(tmp_path: Path) -> None:
    inp, rows = _sample(tmp_path, 4)
    with (EXAMPLES / "airline-tweets-examples.csv").open(newline="", encoding="utf-8") as fh:
        ex = list(csv.DictReader(fh))[:30]
    ex[0] = {"tweet_id": "1", "airline": "x", "text": rows[2]["text"], "label": "neutral"}  # a row's text
    path = tmp_path / "ex.csv"
    _write(path, ex)
    out = tmp_path / "out.csv"
    res = _run(tmp_path, inp, out, "--examples", str(path), "--engine", "echo")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 of 30 left out" in res.stderr and "line 2: its text is input row 3's" in res.stderr, res.stderr
    assert len(_read(out)) == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda rows: rows[3].update(label="happy"),
            "ex.csv, line 5, field 'label': 'happy' is not one of --labels negative, neutral, positive",
        ),
        (lambda rows: rows[1].update(text=""), "ex.csv, line 3, field 'text': empty"),
        (
            lambda rows: [r.update(label="neutral") for r in rows if r["label"] == "positive"],
            "no example labelled 'positive'",
        ),
    ],
)
def test_a_bad_examples_file_is_refused_naming_file_line_and_field(tmp_path: Path, edit, message) -> None:  # type: ignore[no-untyped-def]
    inp, _ = _sample(tmp_path, 4)
    with (EXAMPLES / "airline-tweets-examples.csv").open(newline="", encoding="utf-8") as fh:
        ex = list(csv.DictReader(fh))
    edit(ex)
    path = tmp_path / "ex.csv"
    _write(path, ex)
    res = _run(tmp_path, inp, tmp_path / "out.csv", "--examples", str(path), "--engine", "echo")
    assert res.returncode != 0 and message in res.stderr, res.stderr[-2000:]
    assert "job " not in res.stderr  # refused before a job was created


def test_an_examples_file_without_the_label_column_says_which_columns_it_has(tmp_path: Path) -> None:
    inp, _ = _sample(tmp_path, 4)
    res = _run(tmp_path, inp, tmp_path / "out.csv", "--examples", str(inp), "--engine", "echo")
    assert res.returncode != 0
    assert "no column 'label'" in res.stderr and "--examples-label-column" in res.stderr, res.stderr[-2000:]
