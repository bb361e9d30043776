"""One job spec, every provider: the request body each provider receives, and its answers read back.

The spec is the one a `--labels` job builds (system prompt, prompt template, labels, max_tokens, temperature 0,
logprobs for confidence); each provider's body is checked against the official SDK's own types where the SDK has
them, and each provider's answer must come back as the same OUTPUT content.
"""

from __future__ import annotations

import orjson
import pytest

from coldbatch.builder.spec import RequestSpec
from coldbatch.errors import UsageError
from coldbatch.protocol import limits as L
from coldbatch.providers import kinds as K
from coldbatch.providers import translate as T
from coldbatch.providers.anthropic_batches import _openai_line, unit_prefix
from coldbatch.providers.choose import resolve, sample_body
from coldbatch.providers.gemini_batches import _openai_line as gemini_line
from coldbatch.providers.gemini_batches import tag_name, tag_of
from coldbatch.runner.outcomes import read_output

LABELS = ("negative", "neutral", "positive")
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": list(LABELS)}},
    "required": ["label"],
    "additionalProperties": False,
}


def _spec(**kw: object) -> RequestSpec:
    base: dict[str, object] = {
        "model": "some-model",
        "prompt": "Tweet: {text}",
        "labels": LABELS,
        "max_tokens": 10,
        "system": "You label airline tweets.",
    }
    base.update(kw)
    return RequestSpec(**base)  # type: ignore[arg-type]


def _body(spec: RequestSpec, text: str = "my flight was late") -> dict[str, object]:
    b = sample_body(spec)
    b["messages"][-1]["content"] = "Tweet: " + text  # type: ignore[index]
    return b


def test_openai_body_is_the_spec_as_prepare_writes_it() -> None:
    b = _body(_spec())
    assert b["messages"] == [
        {"role": "system", "content": "You label airline tweets."},
        {"role": "user", "content": "Tweet: my flight was late"},
    ]
    assert b["response_format"]["json_schema"]["schema"] == SCHEMA  # type: ignore[index]
    assert (b["max_tokens"], b["temperature"], b["logprobs"]) == (10, 0.0, True)


def test_anthropic_params_carry_system_prompt_and_schema_and_match_the_sdk_types() -> None:
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming

    p = T.to_anthropic(_body(_spec()))
    assert p == {
        "model": "some-model",
        "max_tokens": 10,
        "system": "You label airline tweets.",
        "messages": [{"role": "user", "content": "Tweet: my flight was late"}],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }
    sdk = MessageCreateParamsNonStreaming
    assert set(p) <= sdk.__required_keys__ | sdk.__optional_keys__  # temperature 0 is not one: dropped


def test_anthropic_gets_a_max_tokens_it_requires_and_refuses_what_it_cannot_express() -> None:
    assert T.to_anthropic(_body(_spec(max_tokens=None, labels=())))["max_tokens"] == T.DEFAULT_MAX_TOKENS
    with pytest.raises(T.Untranslatable, match=r"temperature 1\.5"):
        T.to_anthropic(_body(_spec(temperature=1.5)))
    with pytest.raises(T.Untranslatable, match="'seed' has no Anthropic equivalent"):
        T.to_anthropic(_body(_spec(body={"seed": 1})))
    with pytest.raises(T.Untranslatable, match="n=2"):
        T.to_anthropic(_body(_spec(body={"n": 2})))
    with pytest.raises(T.Untranslatable, match="top_p"):
        T.to_anthropic(_body(_spec(body={"top_p": 0.5})))
    native = T.to_anthropic(_body(_spec(body={"service_tier": "standard_only"})))  # Anthropic's own fields pass
    assert native["service_tier"] == "standard_only"


def test_gemini_request_carries_system_instruction_and_response_schema() -> None:
    from google.genai import types

    r = T.to_gemini(_body(_spec()))
    assert r == {
        "contents": [{"role": "user", "parts": [{"text": "Tweet: my flight was late"}]}],
        "systemInstruction": {"parts": [{"text": "You label airline tweets."}]},
        "generationConfig": {
            "maxOutputTokens": 10,
            "temperature": 0.0,
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "OBJECT",
                "required": ["label"],
                "properties": {"label": {"type": "STRING", "enum": list(LABELS)}},
                "propertyOrdering": ["label"],
            },
        },
    }
    # the SDK's own models of each part (pydantic, extra fields forbidden) accept it as it is
    gen = types.GenerationConfig.model_validate(r["generationConfig"])
    assert gen.response_schema.properties["label"].enum == list(LABELS)  # type: ignore[union-attr]
    assert types.Content.model_validate(r["contents"][0]).parts[0].text == "Tweet: my flight was late"  # type: ignore[index]
    types.Content.model_validate(r["systemInstruction"])


def test_a_user_schema_with_nested_objects_translates_for_gemini() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["tags", "score"],
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "score": {"type": "integer", "minimum": 0},
        },
    }
    r = T.to_gemini(_body(_spec(labels=(), schema=schema)))
    s = r["generationConfig"]["responseSchema"]  # type: ignore[index]
    assert s["properties"]["tags"] == {"type": "ARRAY", "items": {"type": "STRING"}}
    assert "additionalProperties" not in s and s["properties"]["score"]["minimum"] == 0
    from google.genai import types

    types.Schema.model_validate(s)  # Gemini's Schema type (extra fields forbidden) accepts it


def test_every_providers_answer_reads_back_as_the_same_output_content(tmp_path) -> None:  # type: ignore[no-untyped-def]
    answer = '{"label":"negative"}'
    anthropic_result = {
        "type": "succeeded",
        "message": {
            "id": "msg_1",
            "model": "claude-haiku-4-5",
            "stop_reason": "end_turn",
            "content": [{"type": "text", "text": answer}],
            "usage": {"input_tokens": 30, "output_tokens": 5, "cache_read_input_tokens": 10},
        },
    }
    gemini_result = {
        "key": "k-1",
        "response": {
            "candidates": [{"content": {"parts": [{"text": answer}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 5},
        },
    }
    path = tmp_path / "out.jsonl"
    path.write_bytes(
        orjson.dumps(_openai_line("k-1", anthropic_result)) + b"\n" + orjson.dumps(gemini_line(gemini_result)) + b"\n"
    )
    a, g = list(read_output(path, L.CHAT, labels=("label", frozenset(LABELS))))
    assert a.content == g.content == answer and a.state == g.state == "ok"
    assert (a.prompt_tokens, a.completion_tokens, a.cached_tokens) == (40, 5, 10)
    assert (g.prompt_tokens, g.completion_tokens) == (40, 5)


def test_failed_requests_keep_their_error_class_across_providers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = [
        _openai_line(
            "a",
            {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "max_tokens: too large"},
                },
            },
        ),
        _openai_line(
            "b",
            {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            },
        ),
        _openai_line("c", {"type": "expired"}),
        gemini_line({"key": "d", "error": {"code": 3, "message": "bad schema", "status": "INVALID_ARGUMENT"}}),
        gemini_line({"key": "e", "error": {"code": 8, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}),
    ]
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    got = {o.custom_id: (o.state, o.error_code) for o in read_output(path, L.CHAT)}
    assert got == {
        "a": ("failed", "invalid_request_error"),
        "b": ("retry", "overloaded_error"),
        "c": ("retry", "batch_expired"),
        "d": ("failed", "INVALID_ARGUMENT"),
        "e": ("retry", "RESOURCE_EXHAUSTED"),
    }


def test_custom_ids_sent_to_anthropic_fit_its_alphabet_and_are_unique_per_unit() -> None:
    tag = {
        "coldbatch_job": "j",
        "coldbatch_unit": "1",
        "coldbatch_try": "1",
        "coldbatch_round": "1",
        "coldbatch_sha256": "ab",
    }
    prefix = unit_prefix(tag)
    assert prefix != unit_prefix({**tag, "coldbatch_try": "2"})
    ids = ["k-" + "0" * 32, "570306133677760513", "row-7", "ID~2", "a.b", "x" * 80, "ID~3"]
    wire = [T.wire_id(i, prefix) for i in ids]
    assert all(T.ANTHROPIC_ID.match(w) for w in wire), wire
    assert len(set(wire)) == len(wire)
    assert wire[0] == f"{prefix}_k-{'0' * 32}"  # a dedup key is sent as it is, after the unit's prefix


def test_gemini_batch_names_carry_the_unit_tag_both_ways() -> None:
    tag = {
        "coldbatch_job": "job-1",
        "coldbatch_unit": "3",
        "coldbatch_try": "2",
        "coldbatch_round": "1",
        "coldbatch_sha256": "f" * 32,
    }
    assert tag_of(tag_name(tag)) == tag
    assert tag_of("someone else's batch") == {}


@pytest.mark.parametrize(
    ("provider", "base_url", "model", "kind"),
    [
        (None, None, "gpt-4o-mini", "openai"),
        (None, None, "claude-haiku-4-5", "anthropic"),
        (None, None, "gemini-2.5-flash", "gemini"),
        (None, "https://api.anthropic.com", "some-model", "anthropic"),
        (None, "https://generativelanguage.googleapis.com", "m", "gemini"),
        (None, "https://myres.openai.azure.com", "gpt-4o", "azure"),
        (None, "http://127.0.0.1:8000/v1", "SmolLM2-135M-Instruct", "openai"),
        ("anthropic", "http://127.0.0.1:8000", "gpt-4o-mini", "anthropic"),
    ],
)
def test_provider_is_inferred_from_base_url_then_model(provider, base_url, model, kind) -> None:  # type: ignore[no-untyped-def]
    assert K.infer(provider, base_url, model) == kind


def test_each_provider_shards_within_its_own_limits() -> None:
    spec = _spec()
    assert resolve("openai", None, spec, L.Limits())[1].max_requests == 50_000
    assert resolve("anthropic", None, spec, L.Limits())[1].max_requests == 100_000
    assert resolve("anthropic", None, spec, L.Limits())[1].max_bytes < 256 * 1024 * 1024
    assert resolve("azure", None, spec, L.Limits())[1].max_requests == 100_000
    assert resolve("anthropic", None, spec, L.Limits(max_requests=5000))[1].max_requests == 5000
    with pytest.raises(UsageError, match="at most 50,000 requests"):
        resolve("openai", None, spec, L.Limits(max_requests=60_000))


def test_what_a_provider_cannot_answer_is_refused_before_anything_is_built() -> None:
    emb = RequestSpec(model="m", endpoint=L.EMBEDDINGS, input_column="text")
    with pytest.raises(UsageError, match="only chat requests"):
        resolve("anthropic", None, emb, L.Limits())
    with pytest.raises(UsageError, match="--mode sync"):
        resolve("gemini", None, _spec(), L.Limits(), "sync")
    assert resolve("anthropic", None, _spec(), L.Limits(), "auto")[2] == "batch"
    assert resolve("openai", None, _spec(), L.Limits(), "auto")[2] == "auto"


def test_an_openai_key_from_the_environment_is_never_sent_to_anthropic_or_gemini(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    # --api-key falls back on OPENAI_API_KEY (click's envvar): the value arrives as if given
    assert K.api_key("anthropic", "sk-openai") == "sk-ant"
    assert K.api_key("gemini", "sk-openai") is None
    assert K.api_key("anthropic", "sk-typed") == "sk-typed"
    assert K.api_key("openai", None) == "sk-openai"
