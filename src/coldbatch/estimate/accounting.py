"""How OpenAI counts the prompt side of one request: the texts to tokenize plus a fixed overhead.

Chat: 3 tokens per message (plus its role, content, and 1 more plus the name when a message has a
`name`) and 3 that prime the reply, as in OpenAI's cookbook. Embedding inputs given as token arrays
count as their length. Shared by `estimate` and the echo engine, so estimated and "billed" prompt
tokens follow the same rule.
"""

from __future__ import annotations

from typing import Any

from coldbatch.protocol import limits as L

PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3


def _input_texts(inp: Any) -> tuple[list[str], int]:
    """Inputs: strings to tokenize, and inputs that are token arrays already (counted as they are)."""
    if isinstance(inp, str):
        return [inp], 0
    if not isinstance(inp, list):
        return [], 0
    if inp and all(isinstance(x, int) for x in inp):
        return [], len(inp)
    return [x for x in inp if isinstance(x, str)], sum(len(x) for x in inp if isinstance(x, list))


def prompt_texts(body: dict[str, Any], endpoint: str) -> tuple[list[str], int]:
    """(texts to tokenize, fixed token overhead) for one request body."""
    if endpoint in (L.EMBEDDINGS, L.MODERATIONS):
        return _input_texts(body.get("input"))
    texts: list[str] = []
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    names = 0
    for m in messages:
        texts.append(str(m.get("role", "")))
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if m.get("name"):
            texts.append(str(m["name"]))
            names += 1
    for key in ("prompt", "input"):
        if isinstance(body.get(key), str):
            texts.append(body[key])
    return texts, PER_MESSAGE * len(messages) + PER_NAME * names + (REPLY_PRIMING if messages else 0)
