from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coldbatch.errors import UsageError
from coldbatch.runner.deadline import late, parse_deadline


def test_parse_deadline_durations_and_timestamps() -> None:
    assert parse_deadline("90s", now=1000.0) == 1090.0
    assert parse_deadline("30m", now=0.0) == 1800.0
    assert parse_deadline("2h", now=0.0) == 7200.0
    ts = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_deadline("2030-01-01T00:00:00+00:00") == ts.timestamp()
    with pytest.raises(UsageError):
        parse_deadline("soon")


def test_late_compares_the_observed_pace_with_the_time_left() -> None:
    # 100 done in 10 s (10/s); 900 left need 90 s
    assert not late(now=10, deadline=200, started=0, done=100, remaining=900)  # 90 s of 190 s left: fine
    assert late(now=10, deadline=100, started=0, done=100, remaining=900)  # 90 s > 75 % of 90 s left
    assert not late(now=10, deadline=100, started=0, done=100, remaining=0)  # nothing left
    assert late(now=101, deadline=100, started=0, done=100, remaining=1)  # past the deadline


def test_late_when_nothing_finishes_for_a_fifth_of_the_time() -> None:
    assert not late(now=10, deadline=100, started=0, done=0, remaining=50)
    assert late(now=20, deadline=100, started=0, done=0, remaining=50)
