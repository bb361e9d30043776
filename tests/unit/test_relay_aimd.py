"""How the relay's requests in flight follow the upstream (hotpath.client.Gate with adaptive=True; issue 15,
item 10): a 429 halves the limit once per round, answers add one request per round of answers, up to the
configured most. No timing: the law itself, step by step."""

from __future__ import annotations

from coldbatch.hotpath import limits as LM
from coldbatch.hotpath.client import Gate


def gate(adaptive: bool = True, most: int = 32) -> Gate:
    return Gate(LM.Pacer(None, None), most, lambda: 0.0, adaptive=adaptive)


def test_a_refusal_halves_the_limit_once_per_round() -> None:
    g = gate()
    sent_before = g.epoch
    g.refused(sent_before)
    assert int(g.limit) == 16
    g.refused(sent_before)  # sent before the cut: the same overload, not news
    assert int(g.limit) == 16
    g.refused(g.epoch)
    assert int(g.limit) == 8
    for _ in range(10):
        g.refused(g.epoch)
    assert g.limit == 1.0  # never below one request


def test_answers_add_one_request_per_round_up_to_the_configured_most() -> None:
    g = gate()
    g.limit = 4.0
    for _ in range(4):
        g.answered()
    assert int(g.limit) == 4  # 4 answers at 4 in flight: almost one more
    g.answered()
    assert int(g.limit) == 5
    for _ in range(10_000):
        g.answered()
    assert g.limit == 32.0


def test_a_fixed_gate_never_moves() -> None:
    g = gate(adaptive=False)
    g.refused(g.epoch)
    g.answered()
    assert g.limit == 32.0 and g.cuts == 0
