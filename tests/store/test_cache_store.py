"""The `CacheStore` contract: answers by request key, the newest write wins, and the age and count limits
drop the oldest entries first."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from coldbatch.store.interfaces import CacheStore
from coldbatch.store.records import Entry


def test_entries_round_trip(make_cache: Callable[..., CacheStore]) -> None:
    cache = make_cache()
    assert isinstance(cache, CacheStore)
    assert cache.put_many([Entry("k-1", "positive", 10, 2, 0.93), Entry("k-2", "negative", 11, 2)]) == 2
    got = cache.get_many(["k-1", "k-2", "k-3"])
    assert got == {"k-1": Entry("k-1", "positive", 10, 2, 0.93), "k-2": Entry("k-2", "negative", 11, 2)}
    cache.put_many([Entry("k-2", "neutral", 11, 3)])
    assert cache.get_many(["k-2"])["k-2"].content == "neutral"
    stats = cache.stats()
    assert stats["entries"] == 2 and stats["content_bytes"] == len("positive") + len("neutral")
    assert cache.corrupt_ignored == 0


def test_the_count_limit_keeps_the_newest(make_cache: Callable[..., CacheStore]) -> None:
    cache = make_cache(max_entries=2)
    cache.put_many([Entry(f"k-{i}", "x", 1, 1) for i in range(5)])
    assert cache.prune() == 3
    assert cache.stats()["entries"] == 2
    assert cache.clear() == 2 and cache.get_many(["k-0", "k-4"]) == {}


def test_entries_past_the_age_limit_are_neither_returned_nor_kept(
    make_cache: Callable[..., CacheStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make_cache(max_age_days=1)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 2 * 86400)  # written two days ago
    cache.put_many([Entry("k-old", "x", 1, 1)])
    monkeypatch.setattr(time, "time", real)
    cache.put_many([Entry("k-new", "y", 1, 1)])
    assert list(cache.get_many(["k-old", "k-new"])) == ["k-new"]
    assert cache.prune() == 1 and cache.stats()["entries"] == 1
