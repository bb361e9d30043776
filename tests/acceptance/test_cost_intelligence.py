"""Issue: pay for each distinct question once. Counts are taken on the server side (request_counts of
the batches it ran), not from coldbatch's own report."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from _runner_support import TWEETS, coldbatch, echo_server, read_csv


def _received(srv) -> int:  # type: ignore[no-untyped-def]
    return sum(b["request_counts"]["total"] for b in srv.batches())


def _write(path: Path, texts: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        w.writerows((f"r{i}", t) for i, t in enumerate(texts, 1))
    return path


def test_duplicates_are_sent_once_reruns_send_nothing_and_edits_send_only_themselves(tmp_path: Path) -> None:
    rnd = random.Random(5)
    short = ["Great product!", "Arrived broken.", "ok", "Love it"]
    texts = [
        rnd.choice(short) if rnd.random() < 0.3 else f"order {i} was {rnd.choice(['late', 'fine'])}" for i in range(600)
    ]
    data = _write(tmp_path / "a.csv", texts)
    home = tmp_path / "home"
    args = [
        "-m",
        "gpt-4o-mini",
        "-p",
        "Sentiment: {text}",
        "--labels",
        "negative,neutral,positive",
        "--max-tokens",
        "10",
        "--id-column",
        "id",
        "--yes",
        "--poll-interval",
        "0.2",
        "--mode",
        "batch",
    ]
    with echo_server(tmp_path / "srv") as srv:
        first = coldbatch(home, "run", data, "--out", tmp_path / "a.csv.out.csv", *args, "--base-url", srv.base_url)
        assert first.returncode == 0, first.stderr[-2000:]
        assert _received(srv) == len(set(texts)) < len(texts)  # the server saw each distinct question once

        again = coldbatch(home, "run", data, "--out", tmp_path / "again.csv", *args, "--base-url", srv.base_url)
        assert again.returncode == 0, again.stderr[-2000:]
        assert _received(srv) == len(set(texts)), "an identical re-run sends nothing"
        assert read_csv(tmp_path / "again.csv") == [
            {**r, "attempts": "0", "prompt_tokens": "0", "completion_tokens": "0"}
            for r in read_csv(tmp_path / "a.csv.out.csv")
        ]

        edited = list(texts)
        for i in range(0, 600, 100):  # 1 % of the rows get a new text
            edited[i] = f"edited row {i}: totally new"
        data2 = _write(tmp_path / "b.csv", edited)
        third = coldbatch(home, "run", data2, "--out", tmp_path / "b.out.csv", *args, "--base-url", srv.base_url)
        assert third.returncode == 0, third.stderr[-2000:]
        assert _received(srv) == len(set(texts)) + 6, "only the edited rows are sent"
    assert all(r["label"] for r in read_csv(tmp_path / "b.out.csv"))


def test_estimate_matches_the_prompt_tokens_the_echo_engine_reports(tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = [
        "-m",
        "gpt-4o-mini",
        "-p",
        "Tweet: {text}",
        "--labels",
        "negative,neutral,positive",
        "--max-tokens",
        "10",
        "--id-column",
        "tweet_id",
        "--on-duplicate-id",
        "suffix",
    ]
    est = json.loads(coldbatch(home, "estimate", TWEETS, *args, "--json").stdout)["totals"]
    with echo_server(tmp_path / "srv") as srv:
        res = coldbatch(
            home,
            "run",
            TWEETS,
            "--out",
            tmp_path / "t.csv",
            *args,
            "--yes",
            "--poll-interval",
            "0.2",
            "--base-url",
            srv.base_url,
            timeout=240,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        batches = srv.batches()
    actual = sum((b.get("usage") or {}).get("input_tokens", 0) for b in batches)
    assert est["requests_to_send"] == sum(b["request_counts"]["total"] for b in batches)
    assert abs(actual - est["input_tokens_to_send"]) <= 0.02 * est["input_tokens_to_send"], (actual, est)
