"""How OpenAI counts the prompt side of one request: the texts to tokenize plus a fixed overhead.

Chat: 3 tokens per message (plus its role, content and name) and 3 that prime the reply, as in
OpenAI's cookbook. Shared by `estimate` and the echo engine, so estimated and "billed" prompt
tokens use the same rule.
"""

from __future__ import annotations

from typing import Any

from coldbatch.protocol import limits as L

PER_MESSAGE = 3
REPLY_PRIMING = 3


def prompt_texts(body: dict[str, Any], endpoint: str) -> tuple[list[str], int]:
    """(texts to tokenize, fixed token overhead) for one request body."""
    if endpoint in (L.EMBEDDINGS, L.MODERATIONS):
        inp = body.get("input")
        return ([inp] if isinstance(inp, str) else [x for x in inp or [] if isinstance(x, str)]), 0
    texts: list[str] = []
    messages = body.get("messages") or []
    for m in messages:
        if not isinstance(m, dict):
            continue
        texts.append(str(m.get("role", "")))
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if m.get("name"):
            texts.append(str(m["name"]))
    for key in ("prompt", "input"):
        if isinstance(body.get(key), str):
            texts.append(body[key])
    return texts, PER_MESSAGE * len(messages) + (REPLY_PRIMING if messages else 0)
