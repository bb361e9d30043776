from __future__ import annotations

import sqlite3
from pathlib import Path

from coldbatch.core.canonical import is_sampling, request_key
from coldbatch.runner.cache import Entry, ResultCache


def test_request_key_ignores_key_order_and_whitespace_but_not_content() -> None:
    a = request_key("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    b = request_key("/v1/chat/completions", {"messages": [{"content": "hi", "role": "user"}], "model": "m"})
    c = request_key("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi "}]})
    d = request_key("/v1/embeddings", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert a == b
    assert len({a, c, d}) == 3
    assert a.startswith("k-") and len(a) == 34


def test_sampling_detection() -> None:
    assert not is_sampling({"temperature": 0})
    assert not is_sampling({})
    assert is_sampling({"temperature": 0.7})
    assert is_sampling({"n": 3})
    assert is_sampling({"top_p": 0.9})


def test_cache_round_trip_and_corruption_is_ignored(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "c.sqlite3")
    cache.put_many([Entry("k-1", "positive", 10, 2), Entry("k-2", "negative", 11, 2)])
    assert set(cache.get_many(["k-1", "k-2", "k-3"])) == {"k-1", "k-2"}
    db = sqlite3.connect(tmp_path / "c.sqlite3")
    db.execute("UPDATE entries SET content = 'tampered' WHERE key = 'k-2'")
    db.commit()
    db.close()
    got = cache.get_many(["k-1", "k-2"])
    assert list(got) == ["k-1"] and got["k-1"].content == "positive"
    assert cache.corrupt_ignored == 1
    assert cache.stats()["entries"] == 1  # the corrupted entry was removed, never returned


def test_cache_limits(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "c.sqlite3", max_entries=2)
    cache.put_many([Entry(f"k-{i}", "x", 1, 1) for i in range(5)])
    assert cache.prune() == 3
    assert cache.stats()["entries"] == 2
    assert cache.clear() == 2
