"""The enqueued-token quota, one rule for the single-process executor and the scale-out coordinator.

A validated batch is admitted (`in_progress`) only if its prompt tokens, added to those of the model's
batches already queued or running, stay within `--enqueued-token-limit`; otherwise it fails with
OpenAI's `token_limit_exceeded` wording. Both drivers count the same way (o200k_base over the prompt
texts, in groups so memory stays flat in rows) and refuse with the same message, so a client sees one
behaviour whichever server it talks to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coldbatch.estimate import tokens as T
from coldbatch.estimate.accounting import prompt_texts
from coldbatch.jsonl import read_requests
from coldbatch.store.interfaces import ServerStore

#: prompt texts counted per call of the tokenizer (bounds the memory held, whatever the file's size)
COUNT_GROUP = 4096


def prompt_tokens(path: Path, endpoint: str) -> int:
    """The prompt tokens of every request of a validated input file (with each endpoint's overhead)."""
    counter = T.counter("o200k_base")
    total, texts = 0, []
    for _, req in read_requests(path):
        t, overhead = prompt_texts(req.body, endpoint)
        total += overhead
        texts.extend(t)
        if len(texts) > COUNT_GROUP:
            total += sum(counter.count_many(texts))
            texts = []
    return total + sum(counter.count_many(texts))


def over_quota(store: ServerStore, model: str | None, tokens: int, limit: int | None) -> dict[str, Any] | None:
    """The batch error when admitting `tokens` more for `model` would pass `limit` (None: no quota)."""
    if limit is None or store.enqueued_tokens(model) + tokens <= limit:
        return None
    return {
        "code": "token_limit_exceeded",
        "line": None,
        "param": None,
        "message": f"Enqueued token limit reached for {model}. Limit: {limit:,} enqueued tokens. "
        "Please try again once some in_progress batches have been completed.",
    }
