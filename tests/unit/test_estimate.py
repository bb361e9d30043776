"""estimate: exact token counts (tiktoken == quicktok), OpenAI's chat accounting, and prices from the table."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import quicktok
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from coldbatch import RequestSpec, prepare
from coldbatch.errors import ConfigError, InputError, UsageError
from coldbatch.estimate import prices as P
from coldbatch.estimate import tokens as T
from coldbatch.estimate.api import estimate

O200K = quicktok.get_encoding("o200k_base")


def chat(cid: str, messages: list[dict[str, Any]], model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": messages, **body},
    }


def jsonl(tmp_path: Path, *requests: dict[str, Any], name: str = "batch.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
    return path


def test_the_counter_is_exact_and_built_offline() -> None:
    counter = T.counter("o200k_base")
    assert counter.exact and counter.name == "o200k_base"
    assert T._cache_file("o200k_base").parent == T.cache_dir()  # the session's own tiktoken cache
    assert T._cache_file("o200k_base").is_file()


@settings(max_examples=100)
@given(st.text(max_size=60) | st.sampled_from(["", "  \n\n ", "😀👩‍👩‍👧", "ünïcödé", "1234567890" * 3, "a\u2028b"]))
def test_token_counts_equal_quicktok_and_tiktoken(text: str) -> None:
    (ours,) = T.counter("o200k_base").count_many([text])
    assert ours == len(O200K.encode_ordinary(text)) == len(tiktoken.get_encoding("o200k_base").encode_ordinary(text))


TWEETS = Path(__file__).resolve().parents[3] / "shared" / "data" / "airline-tweets" / "Tweets.csv"


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_a_small_job_counts_exactly_from_its_part_of_the_table(encoding: str) -> None:
    """The SubsetCounter (a few thousand texts: no full table loaded) gives tiktoken's counts, on real tweets
    (emoji, mentions, URLs) and on texts made to hit the rare paths; past SUBSET_TEXTS it hands over."""
    import csv

    with TWEETS.open(newline="", encoding="utf-8") as fh:
        texts = [r["text"] for _, r in zip(range(3000), csv.DictReader(fh), strict=False)]
    texts += ["", "  \n\n ", "😀👩‍👩‍👧", "ünïcödé", "1234567890" * 3, "a\u2028b", "x\ud800y", " " * 300, "ab" * 200]
    small = T.SubsetCounter(encoding)
    got = small.count_many(texts[:1000]) + small.count_many(texts[1000:])  # writes tiktoken's cache file too
    full = tiktoken.get_encoding(encoding)
    assert got == [len(full.encode_ordinary(t)) for t in texts]
    assert small._encoding is not None and len(small._ranks) < 50_000  # a part, not the whole table
    assert (small.name, small.exact) == (encoding, True)
    more = ["café au lait"] * (T.SUBSET_TEXTS - len(texts) + 1)
    assert small.count_many(more) == [len(full.encode_ordinary(more[0]))] * len(more)
    long = T.SubsetCounter(encoding)  # one long document: the full table's Rust split is the faster one
    assert long.count_many(["word " * (T.SUBSET_CHARS // 5 + 1)]) == [len(full.encode_ordinary("word " * 200_001))]
    assert long._encoding is None


@settings(max_examples=30, deadline=None)  # each example scans the 200,000-entry table once (~0.2 s)
@given(st.lists(st.text(max_size=60), max_size=5))
def test_subset_counts_equal_tiktoken(texts: list[str]) -> None:
    got = T.SubsetCounter("o200k_base").count_many(texts)
    assert got == [len(tiktoken.get_encoding("o200k_base").encode_ordinary(t)) for t in texts]


def test_split_patterns_are_tiktokens() -> None:
    from tiktoken_ext import openai_public

    # tiktoken loads each table to build the dict: from the session's cache, filled here rather than by whichever
    # test happened to run earlier in this process (under xdist, none may have)
    assert all(T.ensure_cached(n) for n in ("o200k_base", "cl100k_base"))
    assert {n: getattr(openai_public, n)()["pat_str"] for n in ("o200k_base", "cl100k_base")} == T.PATTERNS


def test_cl100k_counts_too() -> None:
    texts = ["hello world", "The quick brown fox.", ""]
    want = [len(quicktok.get_encoding("cl100k_base").encode(t)) for t in texts]
    assert T.counter("cl100k_base").count_many(texts) == want == [2, 5, 0]


def test_chat_accounting_on_a_known_example(tmp_path: Path) -> None:
    # 3 per message + role + content, + 3 to prime the reply: (3+1+6) + (3+1+1) + 3
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello"}]
    est = estimate([jsonl(tmp_path, chat("a", messages, max_tokens=10))])
    assert est.totals["input_tokens"] == 18
    named = [{"role": "user", "name": "alice", "content": "Hello"}]  # a name costs its tokens + 1
    est = estimate([jsonl(tmp_path, chat("a", named, max_tokens=10))])
    assert est.totals["input_tokens"] == 3 + 1 + 1 + (1 + 1) + 3


def test_content_parts_and_embedding_inputs_are_counted(tmp_path: Path) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "image_url", "image_url": {}}]}]
    assert estimate([jsonl(tmp_path, chat("a", parts, max_tokens=1))]).totals["input_tokens"] == 3 + 1 + 1 + 3
    emb = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": inp},
        }
        for i, inp in enumerate(["hello world", ["hello world", "hello"], [1, 2, 3, 4], [[1, 2], [3]]])
    ]
    est = estimate([jsonl(tmp_path, *emb)])
    assert est.totals["input_tokens"] == 2 + (2 + 1) + 4 + 3
    assert est.totals["output_tokens"] == 0
    assert est.models["text-embedding-3-small"].tokenizer == "cl100k_base"


def test_batch_costs_half_of_sync_for_gpt_4o_mini(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "Hello"}]  # 8 prompt tokens
    est = estimate([jsonl(tmp_path, *[chat(str(i), messages, max_tokens=100) for i in range(1000)])])
    t = est.totals
    assert (t["requests"], t["input_tokens"], t["output_tokens"]) == (1000, 8000, 100_000)
    assert t["sync_cost_usd"] == pytest.approx(8000 * 0.15e-6 + 100_000 * 0.60e-6)
    assert t["batch_cost_usd"] == pytest.approx(t["sync_cost_usd"] / 2)
    assert t["saving_pct"] == 50.0
    assert est.warnings == []


def test_expected_output_tokens_replaces_max_tokens(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        chat("a", [{"role": "user", "content": "Hi"}]),
        chat("b", [{"role": "user", "content": "x"}], max_completion_tokens=7),
    )
    est = estimate([path])
    assert est.totals["output_tokens"] == 7
    assert est.models["gpt-4o-mini"].unbounded_output == 1
    assert any("1 request(s) to 'gpt-4o-mini' set no max_tokens" in w for w in est.warnings)
    assert estimate([path], expected_output_tokens=50).totals["output_tokens"] == 100


def test_unknown_model_warns_and_has_no_cost(tmp_path: Path) -> None:
    est = estimate([jsonl(tmp_path, chat("a", [{"role": "user", "content": "Hello"}], model="my-llama", max_tokens=5))])
    data = est.to_json()
    assert data["models"][0]["sync_cost_usd"] is None and data["models"][0]["batch_cost_usd"] is None
    assert data["totals"]["sync_cost_usd"] is None and data["totals"]["saving_pct"] is None
    assert data["totals"]["input_tokens"] == 8  # still counted, with the default tokenizer
    assert any("no price for model 'my-llama'" in w for w in data["warnings"])


def test_dated_snapshots_use_their_base_price_unless_listed() -> None:
    table = P.load()
    assert table.lookup("gpt-4o-mini-2024-07-18") is table.models["gpt-4o-mini"]
    assert table.lookup("gpt-4o-2024-08-06") is table.models["gpt-4o"]
    assert table.lookup("gpt-4o-2024-05-13") is table.models["gpt-4o-2024-05-13"]
    assert table.lookup("gpt-4") is None


def test_every_bundled_batch_price_is_half_the_sync_price() -> None:
    for m in P.load().models.values():
        assert (m.batch_input, m.batch_output, m.batch_cached_input) == (
            m.input / 2,
            m.output / 2,
            m.cached_input / 2,
        ), m.name
    assert P.load().models["gpt-4o-mini"].cost(1_000_000, 0, batch=True) == Decimal("0.075")


def test_over_context_requests_are_listed(tmp_path: Path) -> None:
    reqs = [
        chat("a", [{"role": "user", "content": "Hi"}], max_tokens=128_000),
        chat("b", [{"role": "user", "content": "Hi"}], max_tokens=10),
    ]
    est = estimate([jsonl(tmp_path, *reqs)])
    assert est.over_context_total == 1
    assert est.over_context[0]["custom_id"] == "a" and est.over_context[0]["where"] == "batch.jsonl:1"


def test_a_custom_price_table_and_an_offline_less_tokenizer(tmp_path: Path) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text(
        'version = "t1"\n[models.mine]\nencoding = "p50k_base"\ninput = 1\ncached_input = 1\n'
        "output = 2\nbatch_input = 0.5\nbatch_cached_input = 0.5\nbatch_output = 1\n"
    )
    est = estimate(
        [jsonl(tmp_path, chat("a", [{"role": "user", "content": "12345678"}], model="mine", max_tokens=4))],
        prices=P.load(toml),
    )
    m = est.models["mine"]
    assert est.price_table == "t1"
    assert not m.exact and m.tokenizer == "approx-4-bytes"
    assert m.input_tokens == 3 + 1 + 2 + 3  # "user" -> 1, "12345678" -> 2 at 4 bytes per token
    assert any("approximate" in w for w in est.warnings)
    assert m.sync_cost == Decimal(9 * 1 + 4 * 2) / 1_000_000


@pytest.mark.parametrize(
    ("text", "match"),
    [("version = 1\n[models.x]\ninput = 1\n", "lacks price field"), ("not toml [", "cannot read price table")],
)
def test_broken_price_tables_are_config_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        P.load(path)


@pytest.mark.parametrize("line", [b"id,text", b"[1]", b'{"custom_id": "a", "body": "x"}'])
def test_a_line_that_is_not_a_request_is_an_input_error_naming_it(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(orjson.dumps(chat("a", [{"role": "user", "content": "x"}])) + b"\n\n" + line + b"\n")
    with pytest.raises(InputError, match=r"data.csv:3: not a batch request line"):
        estimate([path])


def test_estimating_a_dataset_checks_the_template_columns_first(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,a\n")
    with pytest.raises(UsageError, match=r"'body'.*available columns: id, text"):
        estimate([src], spec=RequestSpec(model="gpt-4o-mini", prompt="{body}"))


def test_estimating_a_dataset_equals_estimating_its_prepared_shards(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,"Great flight, thanks!"\n2,\n3,"delayed again 😡"\n')
    spec = RequestSpec(
        model="gpt-4o-mini", prompt="Sentiment: {text}", id_column="id", max_tokens=3, labels=("positive", "negative")
    )
    direct = estimate([src], spec=spec).to_json()
    out = prepare(src, tmp_path / "out", spec).out
    assert estimate([out]).to_json()["totals"] == direct["totals"]
    assert direct["totals"]["requests"] == 2
