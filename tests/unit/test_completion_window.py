"""protocol/batches.py: a batch's completion window is never shorter than the one asked for. Timestamps on the
wire are whole seconds (`created_at` rounded down, `expires_at = created_at + window`), so the window ends when
the `expires_at` second has passed."""

from __future__ import annotations

import pytest

from coldbatch.errors import ApiError
from coldbatch.protocol.batches import completion_window_seconds, past_window, window_left


@pytest.mark.parametrize("created", [1000.0, 1000.1, 1000.5, 1000.9, 1000.999])
def test_a_one_second_window_lasts_at_least_one_second_wherever_in_a_second_it_was_created(created: float) -> None:
    expires_at = int(created) + completion_window_seconds("1s", allow_short=True)
    assert expires_at == 1001  # what the client sees: created_at + 1
    assert not past_window(expires_at, created + 0.999)
    assert window_left(expires_at, created) >= 1.0
    assert past_window(expires_at, 1002.0)  # and it does end: at most one second late


def test_the_24h_window_ends_within_a_second_after_expires_at() -> None:
    expires_at = 1_000 + completion_window_seconds("24h", allow_short=False)
    assert not past_window(expires_at, expires_at + 0.5)
    assert past_window(expires_at, expires_at + 1)


def test_short_windows_are_refused_unless_the_server_allows_them() -> None:
    with pytest.raises(ApiError) as ei:
        completion_window_seconds("1s", allow_short=False)
    assert ei.value.param == "completion_window"
