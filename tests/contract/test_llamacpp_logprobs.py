"""OpenAI's `logprobs` / `top_logprobs` on the real local model, through the official SDK on loopback:
what a user asking "how sure was it?" gets, and that asking never changes the answer."""

from __future__ import annotations

import math

import openai
import pytest

pytest.importorskip("llama_cpp")

from coldbatch.engines.pool import open_engine

MESSAGES = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What colour is the sky on a clear day?"},
]
LABELS = ["negative", "neutral", "positive"]
LABEL_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": LABELS}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
def client(serve):  # type: ignore[no-untyped-def]
    return serve(open_engine("llama-cpp")).client()  # in worker processes, as `coldbatch serve` runs it


def test_logprobs_describe_each_answer_token_and_leave_the_answer_alone(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=MESSAGES, temperature=0, max_tokens=12
    )
    got = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=MESSAGES, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    choice = got.choices[0]
    assert choice.message.content == plain.choices[0].message.content  # same greedy answer
    assert plain.choices[0].logprobs is None
    tokens = choice.logprobs.content if choice.logprobs else None
    assert tokens and len(tokens) == got.usage.completion_tokens  # type: ignore[union-attr]
    assert b"".join(bytes(t.bytes or []) for t in tokens).decode() == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        alts = [a.logprob for a in t.top_logprobs]
        assert alts == sorted(alts, reverse=True) and sum(math.exp(a) for a in alts) <= 1 + 1e-6
        # greedy, no grammar: the chosen token is the model's most likely one
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
    # a label answer: the tokens spell the grammar-constrained answer; their logprobs are the model's own
    got = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        temperature=0,
        max_tokens=32,
        logprobs=True,
        top_logprobs=5,
        response_format=LABEL_FORMAT,  # type: ignore[arg-type]
        messages=[
            {"role": "system", "content": f"Classify the sentiment as one of: {', '.join(LABELS)}."},
            {"role": "user", "content": "Tweet: @united thank you, the crew was wonderful!"},
        ],
    )
    tokens = got.choices[0].logprobs.content  # type: ignore[union-attr]
    assert tokens is not None
    text = b"".join(bytes(t.bytes or []) for t in tokens).decode()
    assert text == got.choices[0].message.content and any(label in text for label in LABELS)
    assert all(len(t.top_logprobs) == 5 and t.logprob <= 0 for t in tokens)


def test_bad_logprobs_options_are_400s_that_name_the_option(client: openai.OpenAI) -> None:
    for extra, param in (
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=MESSAGES, max_tokens=4, **extra)  # type: ignore[arg-type]
        assert err.value.param == param, extra  # type: ignore[attr-defined]
