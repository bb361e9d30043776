"""How a label's confidence is read from token logprobs, and the classifier `--examples` fits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coldbatch.core import classify
from coldbatch.runner.confidence import label_confidence

LABELS = ("negative", "neutral", "positive")


def _tok(text: str, p: float, alts: list[tuple[str, float]] | None = None) -> dict[str, object]:
    return {
        "token": text,
        "logprob": math.log(p),
        "bytes": list(text.encode()),
        "top_logprobs": [{"token": t, "logprob": math.log(q), "bytes": list(t.encode())} for t, q in alts or []],
    }


def _body(tokens: list[dict[str, object]]) -> dict[str, object]:
    return {
        "choices": [{"message": {"content": "".join(str(t["token"]) for t in tokens)}, "logprobs": {"content": tokens}}]
    }


def test_the_chosen_labels_share_among_the_labels_seen_at_its_first_token() -> None:
    tokens = [
        _tok('{"label": "', 1.0),
        _tok("neg", 0.5, [("neg", 0.5), ("pos", 0.2), ("Neg", 0.2), ("ne", 0.05)]),
        _tok("ative", 0.9),
        _tok('"}', 1.0),
    ]
    # chosen: 0.5 * 0.9 = 0.45; 'pos' starts another label (0.2); 'Neg' starts none; 'ne' starts both
    # negative and neutral, so it is no vote against the chosen label
    got = label_confidence(_body(tokens), '{"label": "negative"}', "label", LABELS)
    assert got == pytest.approx(0.45 / (0.45 + 0.2))


def test_a_lead_in_shared_with_the_label_token_is_matched() -> None:
    tokens = [
        _tok('{"label":', 1.0),
        _tok(' "pos', 0.6, [(' "pos', 0.6), (' "neu', 0.3), (' "', 0.05)]),
        _tok('itive"}', 1.0),
    ]
    got = label_confidence(_body(tokens), '{"label": "positive"}', "label", LABELS)
    assert got == pytest.approx(0.6 / 0.9)


def test_without_alternatives_it_is_the_labels_own_probability() -> None:
    tokens = [_tok('{"label": "', 1.0), _tok("neutral", 0.7), _tok('"}', 1.0)]
    for t in tokens:
        t["top_logprobs"] = []
    assert label_confidence(_body(tokens), '{"label": "neutral"}', "label", LABELS) == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("body", "content"),
    [
        ({"choices": [{"logprobs": None}]}, '{"label": "negative"}'),  # the provider sent none
        (_body([_tok('{"label": "negative"}', 0.9)]), '{"label": "other"}'),  # not a label
        (_body([_tok('{"label": "neg"}', 0.9)]), '{"label": "negative"}'),  # tokens that do not spell the answer
    ],
)
def test_no_confidence_when_it_cannot_be_told(body: dict[str, object], content: str) -> None:
    assert label_confidence(body, content, "label", LABELS) is None


def test_logistic_regression_separates_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8) * 3
    y = np.repeat(np.arange(3), 30)
    x = centers[y] + rng.normal(size=(90, 8))
    first, second = classify.fit(x, y, 3), classify.fit(x, y, 3)
    assert np.array_equal(first.weights, second.weights)
    p = first.proba(x)
    assert np.allclose(p.sum(axis=1), 1) and (p.argmax(axis=1) == y).mean() > 0.9


def test_prior_adaptation_moves_probabilities_towards_the_rows_label_frequencies() -> None:
    # a classifier trained on balanced labels, unsure about rows that are in truth mostly label 0
    proba = np.array([[0.6, 0.4]] * 8 + [[0.4, 0.6]] * 2)
    adapted = classify.adapt_priors(proba, np.array([0.5, 0.5]))
    assert adapted[:, 0].mean() > proba[:, 0].mean()
    weighted = classify.adapt_priors(proba, np.array([0.5, 0.5]), weights=np.array([1.0] * 8 + [10.0] * 2))
    assert weighted[:, 0].mean() < adapted[:, 0].mean()  # rows that stand for many count for many
