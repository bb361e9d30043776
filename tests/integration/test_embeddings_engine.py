"""`/v1/embeddings` on the llama-cpp engine: the real all-MiniLM-L6-v2 from the `[local]` extra, run by
llama.cpp after our safetensors -> GGUF conversion (a few seconds in all)."""

from __future__ import annotations

import asyncio
import base64
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from coldbatch.engines import bert_gguf, embedding
from coldbatch.engines.base import Result
from coldbatch.engines.llamacpp import LlamaCppEngine
from coldbatch.errors import ConfigError

EMB = "/v1/embeddings"
SOURCE = embedding.default_embedding_source()
pytestmark = pytest.mark.skipif(SOURCE is None, reason="the [local] extra's embedding model is not installed")


@pytest.fixture(scope="module")
def engine():
    eng = LlamaCppEngine()
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def model():
    m = embedding.EmbeddingModel(SOURCE, n_threads=2)
    yield m
    m.close()


def embed(engine: LlamaCppEngine, body: dict) -> Result:
    return asyncio.run(engine.complete(EMB, body))


def vectors(result: Result) -> np.ndarray:
    return np.array([d["embedding"] for d in result.body["data"]], dtype=np.float64)


# -- the model itself ------------------------------------------------------------------------------


def _reference(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """all-MiniLM-L6-v2 in plain numpy (BERT encoder, mean pooling, L2 norm), float64, from the same file."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items() if k != "embeddings.position_ids"}
    erf = np.vectorize(math.erf)

    def norm(x: np.ndarray, p: str) -> np.ndarray:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
        return x * w[p + ".weight"] + w[p + ".bias"]

    def lin(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    n, heads = len(ids), 12
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (
            lin(x, p + f"attention.self.{t}").reshape(n, heads, -1).transpose(1, 0, 2)
            for t in ("query", "key", "value")
        )
        a = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        a = np.exp(a - a.max(-1, keepdims=True))
        a = (a / a.sum(-1, keepdims=True)) @ v
        x = norm(
            lin(a.transpose(1, 0, 2).reshape(n, -1), p + "attention.output.dense") + x, p + "attention.output.LayerNorm"
        )
        h = lin(x, p + "intermediate.dense")
        x = norm(lin(0.5 * h * (1 + erf(h / math.sqrt(2))), p + "output.dense") + x, p + "output.LayerNorm")
    e = x.mean(0)
    return e / np.linalg.norm(e)


def test_the_converted_model_computes_what_the_weights_say(model):
    """llama.cpp on our GGUF agrees with a plain numpy forward pass over the original safetensors."""
    weights = bert_gguf.read_safetensors(SOURCE / "model.safetensors")
    texts = ["hello world", "@united my flight was delayed three hours and nobody told us why"]
    tokens = [model.tokenize(t) for t in texts]
    for tk, vec in zip(tokens, model.embed(tokens), strict=True):
        assert float(vec @ _reference(weights, tk)) > 0.9999


def test_wordpiece_tokens_match_bert(model):
    """bert-base-uncased's greedy longest match: [CLS] una ##ffa ##ble [SEP]; lower-cased, accents stripped."""
    assert model.tokenize("unaffable") == [101, 14477, 20961, 3468, 102]
    assert model.tokenize("Héllo WORLD") == model.tokenize("hello world") == [101, 7592, 2088, 102]


def test_packing_texts_together_barely_moves_a_vector(model):
    tokens = [model.tokenize(t) for t in ("short", "a much longer sentence about airline luggage fees", "ok")]
    together = model.embed(tokens)
    alone = np.stack([model.embed([t])[0] for t in tokens])
    assert np.abs(together - alone).max() < 1e-3
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)


def test_a_bad_source_is_a_config_error(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match="neither a GGUF"):
        LlamaCppEngine(embedding_model=str(tmp_path / "notes.txt"))
    with pytest.raises(ConfigError, match="not found"):
        LlamaCppEngine(embedding_model=str(tmp_path / "missing.gguf"))


def test_requests_that_arrive_while_the_model_loads_all_get_answers():
    eng = LlamaCppEngine()

    async def first_ones() -> list[Result]:
        return await asyncio.gather(*(eng.complete(EMB, {"model": "m", "input": f"text {i}"}) for i in range(20)))

    try:
        assert [r.status_code for r in asyncio.run(first_ones())] == [200] * 20
    finally:
        asyncio.run(eng.aclose())


def test_embeddings_can_be_turned_off():
    eng = LlamaCppEngine(embeddings=False)
    try:
        assert eng.info.endpoints == frozenset({"/v1/chat/completions"})
        assert embed(eng, {"model": "m", "input": "hi"}).body["error"]["param"] == "url"
    finally:
        asyncio.run(eng.aclose())


# -- the engine --------------------------------------------------------------------------------------


def test_engine_serves_chat_and_embeddings(engine):
    assert {"/v1/chat/completions", EMB} <= engine.info.endpoints
    assert embedding.DEFAULT_EMBEDDING_MODEL in (engine.info.models or ())


def test_answer_is_an_openai_embedding_list(engine):
    result = embed(engine, {"model": "text-embedding-3-small", "input": ["The plane was late.", "hello"]})
    assert result.status_code == 200
    body = result.body
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    vecs = vectors(result)
    assert vecs.shape == (2, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 7 + 3  # [CLS] ... [SEP] each
    assert result.usage == body["usage"]


def test_base64_is_the_same_vector_as_little_endian_float32(engine):
    plain = vectors(embed(engine, {"model": "m", "input": "base64 or floats"}))[0]
    encoded = embed(engine, {"model": "m", "input": "base64 or floats", "encoding_format": "base64"})
    raw = np.frombuffer(base64.b64decode(encoded.body["data"][0]["embedding"]), dtype="<f4")
    assert raw.shape == (384,) and np.array_equal(raw.astype(np.float64), plain.astype(np.float32).astype(np.float64))


def test_concurrent_requests_each_get_their_own_vector(engine):
    texts = [f"request number {i} about a cancelled flight" for i in range(40)]

    async def many() -> list[Result]:
        return await asyncio.gather(*(engine.complete(EMB, {"model": "m", "input": t}) for t in texts))

    results = asyncio.run(many())
    got = np.stack([vectors(r)[0] for r in results])
    alone = vectors(embed(engine, {"model": "m", "input": texts}))
    assert np.abs(got - alone).max() < 1e-3


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "m"}, "non-empty"),
        ({"model": "m", "input": []}, "non-empty"),
        ({"model": "m", "input": ""}, "must not be empty"),
        ({"model": "m", "input": ["ok", 3]}, "array of strings"),
        ({"model": "m", "input": [[10**9]]}, "cl100k_base does not have"),
        ({"model": "m", "input": [[1, 2], []]}, "token arrays"),
        ({"model": "m", "input": [{"text": "x"}]}, "string"),
        ({"model": "m", "input": ["x"] * 2049}, "at most 2048"),
        ({"model": "m", "input": "x", "dimensions": 64}, "dimensions"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "m", "input": "word " * 600}, "at most 512"),
    ],
)
def test_bad_bodies_are_400_results(engine, body, fragment):
    result = embed(engine, body)
    assert result.status_code == 400
    assert fragment in result.body["error"]["message"]
    assert result.body["error"]["type"] == "invalid_request_error"


def test_token_arrays_are_cl100k_ids_as_openai_means_them(engine):
    """What LangChain's OpenAIEmbeddings sends by default: the text's cl100k_base ids."""
    from coldbatch.estimate.tokens import counter

    enc = counter("cl100k_base").encoding
    texts = ["My flight was cancelled.", "Grüße aus München"]
    as_text = vectors(embed(engine, {"model": "m", "input": texts}))
    as_ids = vectors(embed(engine, {"model": "m", "input": [enc.encode(t) for t in texts]}))
    one = vectors(embed(engine, {"model": "m", "input": enc.encode(texts[0])}))
    assert np.abs(as_text - as_ids).max() < 1e-3 and np.abs(one[0] - as_text[0]).max() < 1e-3


def test_its_own_dimension_count_is_accepted(engine):
    assert embed(engine, {"model": "m", "input": "x", "dimensions": 384}).status_code == 200
