"""The llama-cpp engine with the real SmolLM2-135M model (CPU, a few seconds in all)."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from coldbatch.engines.base import Result
from coldbatch.engines.llamacpp import MISSING_EXTRA, LlamaCppEngine, default_model_path, model_id
from coldbatch.engines.pool import WorkerPool
from coldbatch.errors import ConfigError

CHAT = "/v1/chat/completions"
TWEETS = Path(__file__).resolve().parents[2].parent / "shared/data/airline-tweets/Tweets.csv"
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
SYSTEM = (
    'Classify the user\'s text. Answer with JSON {"label": ...} where label is exactly one of: '
    "negative, neutral, positive."
)


@pytest.fixture(scope="module")
def engine():
    """The engine as the server runs it: in a worker process, so a native crash fails a test, not the run."""
    eng = WorkerPool("llama-cpp", {"n_threads": 2}, workers=1)
    yield eng
    eng.close()


def complete(engine: WorkerPool | LlamaCppEngine, body: dict, endpoint: str = CHAT) -> Result:
    return asyncio.run(engine.complete(endpoint, body))


def chat(text: str, **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def label_body(text: str) -> dict:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "response_format": LABEL_FORMAT,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
    }


def tweets(n: int) -> list[dict[str, str]]:
    with TWEETS.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return [next(reader) for _ in range(n)]


def test_info_names_the_model(engine):
    assert engine.info.name == "llama-cpp"
    assert engine.info.endpoints == frozenset({CHAT, "/v1/embeddings"})
    assert engine.info.models == frozenset({"SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"})
    assert engine.info.max_concurrency >= 1 and not engine.info.fixture
    assert model_id(default_model_path()) == "SmolLM2-135M-Instruct"


def test_answer_is_an_openai_chat_completion(engine):
    result = complete(engine, chat("Say hello.", max_tokens=16))
    assert result.ok and result.status_code == 200
    body = result.body
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "SmolLM2-135M-Instruct"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert result.usage == usage


def test_max_tokens_is_respected(engine):
    for key in ("max_tokens", "max_completion_tokens"):
        result = complete(engine, chat("Write a long story about a dragon.", **{key: 3}))
        assert result.body["choices"][0]["finish_reason"] == "length"
        assert result.body["usage"]["completion_tokens"] == 3


def test_labels_are_always_valid_and_mostly_right(engine):
    rows = tweets(20)

    async def run() -> list[Result]:
        return list(await asyncio.gather(*(engine.complete(CHAT, label_body(r["text"])) for r in rows)))

    results = asyncio.run(run())
    labels = [json.loads(r.body["choices"][0]["message"]["content"])["label"] for r in results]
    assert all(label in LABELS for label in labels)
    assert all(r.body["choices"][0]["finish_reason"] == "stop" for r in results)
    assert all(0 < r.usage["completion_tokens"] <= 12 for r in results)
    correct = sum(label == r["airline_sentiment"] for label, r in zip(labels, rows, strict=True))
    assert correct >= 4  # a 135 M model; the point is validity, not quality


def test_greedy_answers_do_not_depend_on_other_requests(engine):
    text = tweets(3)[2]["text"]
    alone = complete(engine, label_body(text)).body["choices"][0]["message"]["content"]

    async def crowded() -> str:
        others = [engine.complete(CHAT, chat(f"Count to {n}.", max_tokens=8)) for n in range(3)]
        mine = engine.complete(CHAT, label_body(text))
        results = await asyncio.gather(*others, mine)
        return results[-1].body["choices"][0]["message"]["content"]

    assert asyncio.run(crowded()) == alone


def test_json_object_and_stop(engine):
    result = complete(engine, chat("Describe a cat as JSON.", max_tokens=20, response_format={"type": "json_object"}))
    assert result.body["choices"][0]["message"]["content"].lstrip().startswith("{")
    full = complete(engine, chat("Name three colors.", max_tokens=12)).body["choices"][0]["message"]["content"]
    stop = full[4:7]
    assert stop.strip(), full
    cut = complete(engine, chat("Name three colors.", max_tokens=12, stop=[stop])).body
    assert cut["choices"][0]["message"]["content"] == full[: full.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("/v1/completions", {"model": "m", "prompt": "hi"}, "url"),
        (CHAT, {"model": "m"}, "messages"),
        (CHAT, {"model": "m", "messages": []}, "messages"),
        (CHAT, {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        (CHAT, chat("hi", max_tokens=0), "max_tokens"),
        (CHAT, chat("hi", temperature=3), "temperature"),
        (CHAT, chat("hi", stream=True), "stream"),
        (CHAT, chat("hi", n=2), "n"),
        (CHAT, chat("hi", response_format={"type": "json_schema"}), "response_format"),
        (CHAT, chat("hi", max_tokens=4096), "messages"),
    ],
)
def test_bad_bodies_are_400_results(engine, endpoint, body, param):
    result = complete(engine, body, endpoint)
    assert result.status_code == 400 and not result.ok
    assert result.body["error"]["type"] == "invalid_request_error"
    assert result.body["error"]["param"] == param


def test_missing_extra_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ConfigError, match=r"pip install 'coldbatch\[local\]'") as info:
        LlamaCppEngine()
    assert str(info.value) == MISSING_EXTRA


def test_closed_engine_refuses_work():
    eng = LlamaCppEngine(n_ctx=256)
    asyncio.run(eng.aclose())
    with pytest.raises(RuntimeError, match="closed"):
        complete(eng, chat("hi"))
