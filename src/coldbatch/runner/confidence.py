"""A label answer's `confidence`: the probability the model gave the label it chose, from token logprobs.

Any OpenAI-compatible provider that returns `choices[0].logprobs.content` (OpenAI, the local llama-cpp
engine) gives one; a provider that returns none leaves the cell empty. How it is derived:

1. The answer's tokens must spell the answer text exactly (their `bytes`, concatenated); the label value
   (`negative` in `{"label": "negative"}`) covers some of them: from the token holding its first byte
   (which may also hold what precedes it, e.g. `"neg`) to the one holding its last.
2. p(chosen) = exp(sum of those tokens' logprobs): the probability of spelling this label once the model
   had written what precedes it.
3. With `top_logprobs`, the alternatives at the label's first token are read as votes: an alternative that
   starts with the same lead-in (`"`) and then spells the start of another label, and of no label that the
   chosen one also starts with, is probability mass for that other label (its continuation is counted as
   certain). confidence = p(chosen) / (p(chosen) + that mass): the chosen label's share among the labels.
   Without `top_logprobs` it is p(chosen) itself.

Why renormalise: a local model's distribution (reported before the grammar mask, as OpenAI does) puts mass
on tokens no label starts with ("Negative", a newline); that mass says nothing about which label is right.
"""

from __future__ import annotations

import math
from typing import Any

import orjson


def label_confidence(
    body: dict[str, Any], content: str | None, field: str, labels: tuple[str, ...] | frozenset[str]
) -> float | None:
    """The chosen label's probability in [0, 1] (see the module docstring), or None when it cannot be told."""
    tokens = _tokens(body)
    span = _label_span(content, field, labels) if tokens is not None else None  # most answers: no logprobs
    if tokens is None or span is None:
        return None
    value, start, end = span
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t["bytes"])
    if b"".join(bytes(t["bytes"]) for t in tokens) != content.encode():  # type: ignore[union-attr]
        return None
    covering = [i for i, o in enumerate(offsets) if o < end and o + len(tokens[i]["bytes"]) > start]
    first = covering[0]
    chosen = math.exp(sum(float(tokens[i]["logprob"]) for i in covering))
    lead = bytes(tokens[first]["bytes"])[: start - offsets[first]]
    others = _other_mass(tokens[first], lead, value, labels)
    if others is None:
        return min(1.0, chosen)
    return chosen / (chosen + others) if chosen + others > 0 else None


def _tokens(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    choices = body.get("choices") or [{}]
    logprobs = choices[0].get("logprobs") if isinstance(choices[0], dict) else None
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    ok = all(
        isinstance(t, dict) and isinstance(t.get("bytes"), list) and isinstance(t.get("logprob"), int | float)
        for t in content
    )
    return content if ok else None


def _label_span(content: str | None, field: str, labels: Any) -> tuple[str, int, int] | None:
    """(label, first byte, end byte) of the label's characters inside the answer text."""
    try:
        value = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None
    label = value.get(field) if isinstance(value, dict) else None
    if not isinstance(label, str) or label not in labels:
        return None
    raw = content.encode()  # type: ignore[union-attr]
    key = raw.find(orjson.dumps(field))
    quoted = orjson.dumps(label)
    at = raw.find(quoted, key + len(orjson.dumps(field))) if key >= 0 else -1
    if at < 0:
        return None
    return label, at + 1, at + len(quoted) - 1


def _other_mass(token: dict[str, Any], lead: bytes, chosen: str, labels: Any) -> float | None:
    """Probability of the alternatives at the label's first token that start another label only; None: no
    alternatives were returned."""
    alternatives = token.get("top_logprobs")
    if not isinstance(alternatives, list) or not alternatives:
        return None
    mine = bytes(token["bytes"])
    mass = 0.0
    for alt in alternatives:
        raw = bytes(alt.get("bytes") or [])
        if raw == mine or not raw.startswith(lead) or len(raw) == len(lead):
            continue
        rest = raw[len(lead) :]
        starts = {x for x in labels if x.encode().startswith(rest) or rest.startswith(x.encode() + b'"')}
        if starts and chosen not in starts:
            mass += math.exp(float(alt.get("logprob", -math.inf)))
    return mass
