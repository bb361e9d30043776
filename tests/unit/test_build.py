"""builder.spec and builder.build: every built line is the exact request a row should give, or a reported reject."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldbatch.builder.build import Builder, IdTracker
from coldbatch.builder.spec import RequestSpec
from coldbatch.core.validate import FileValidator
from coldbatch.errors import UsageError
from coldbatch.protocol import limits as L


def batch(**columns: list[str | None]) -> pa.RecordBatch:
    return pa.record_batch({k: pa.array(v, pa.string()) for k, v in columns.items()})


def build(spec: RequestSpec, *batches: pa.RecordBatch, max_line_bytes: int = 10**6) -> tuple[Builder, list[str]]:
    builder = Builder(spec, file="data.csv", max_line_bytes=max_line_bytes)
    lines: list[str] = []
    start = 0
    for b in batches:
        lines += builder.build(start, b).lines.to_pylist()
        start += b.num_rows
    return builder, lines


def expected_chat(cid: str, content: str, spec: RequestSpec) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    if spec.system_text is not None:
        messages.insert(0, {"role": "system", "content": spec.system_text})
    return {
        "custom_id": cid,
        "method": "POST",
        "url": L.CHAT,
        "body": {"model": spec.model, "messages": messages, **spec.extra_body()},
    }


# Text that JSON must escape: quotes, backslashes, every control character, the JS line separators,
# surrogate-pair emoji, and invisible or combining characters.
_tricky = st.sampled_from(
    [
        '"',
        "\\",
        "\n",
        "\r",
        "\t",
        "\x00",
        "\x1f",
        "\x7f",
        "\u2028",
        "\u2029",
        "\ufeff",
        "\u200b",
        "😀",
        "👩‍👩‍👧",
        "é",
        "\U0010ffff",
        "</script>",
        "{",
        "}",
        "~",
    ]
)
_texts = st.lists(st.text(max_size=8) | _tricky, max_size=6).map("".join)


@settings(max_examples=150)
@given(
    st.lists(st.tuples(_texts.filter(lambda s: s.strip() != ""), _texts), min_size=1, max_size=12),
    st.sampled_from([None, "Be brief.", 'Say "yes" \\ or\nno']),
)
def test_built_lines_decode_to_the_exact_request(rows: list[tuple[str, str]], system: str | None) -> None:
    ids = [f"{i}:{cid}" for i, (cid, _) in enumerate(rows)]
    spec = RequestSpec(
        model="gpt-4o-mini",
        prompt="Q {text} ✓ {{x}}",
        system=system,
        id_column="id",
        max_tokens=5,
        temperature=0.5,
        body={"seed": 1, "metadata": {"k": "\u2028"}},
    )
    texts = [text if text.strip() else text + "x" for _, text in rows]
    builder, lines = build(spec, batch(id=ids, text=texts))
    assert builder.rejected == 0
    assert len(lines) == len(rows)
    for cid, text, line in zip(ids, texts, lines, strict=True):
        assert line.endswith("\n") and line.count("\n") == 1  # one request per physical line
        want = expected_chat(cid, spec.template.render({"text": text}), spec)
        assert json.loads(line) == want
        assert orjson.loads(line) == want
    report = FileValidator().feed_many(x.encode()[:-1] for x in lines).finish()
    assert report.ok, report.errors[:3]


@settings(max_examples=100)
@given(st.lists(_texts.filter(lambda s: s.strip() != ""), min_size=1, max_size=8))
def test_embedding_lines_carry_the_column_verbatim(texts: list[str]) -> None:
    spec = RequestSpec(model="text-embedding-3-small", endpoint=L.EMBEDDINGS, input_column="doc")
    _, lines = build(spec, batch(doc=texts))
    assert [json.loads(x) for x in lines] == [
        {
            "custom_id": f"row-{i}",
            "method": "POST",
            "url": L.EMBEDDINGS,
            "body": {"model": "text-embedding-3-small", "input": t},
        }
        for i, t in enumerate(texts, 1)
    ]


def test_labels_add_a_system_prompt_and_a_strict_json_schema() -> None:
    spec = RequestSpec(model="m", prompt="{t}", labels=("pos", "neg"))
    _, (line,) = build(spec, batch(t=["great"]))
    body = json.loads(line)["body"]
    assert body["messages"][0] == {
        "role": "system",
        "content": "Classify the user's text. Answer with JSON "
        '{"label": ...} where label is exactly one of: pos, neg.',
    }
    schema = body["response_format"]["json_schema"]
    assert schema["strict"] is True
    assert schema["schema"]["properties"]["label"]["enum"] == ["pos", "neg"]


def test_a_template_without_columns_sends_the_same_text_for_every_row() -> None:
    _, lines = build(RequestSpec(model="m", prompt="Say {{hi}}"), batch(t=["a", None, ""]))
    assert [json.loads(x)["body"]["messages"][0]["content"] for x in lines] == ["Say {hi}"] * 3


def test_rows_with_nothing_to_send_or_no_id_are_rejected_with_their_row_numbers() -> None:
    spec = RequestSpec(model="m", prompt="{a} {b}", id_column="id")
    rows = batch(id=["1", "2", "", "4", None, "6"], a=["x", " ", "x", None, "x", "\t\n"], b=["", "", "y", "", "", "z"])
    builder, lines = build(spec, batch(id=["0"], a=["ok"], b=["ok"]), rows)
    assert [json.loads(x)["custom_id"] for x in lines] == ["0", "1", "6"]
    assert sorted((r.line, r.code, r.param) for r in builder.rejects) == [
        (3, "empty_input", "a, b"),
        (4, "missing_custom_id", "id"),
        (5, "empty_input", "a, b"),
        (6, "missing_custom_id", "id"),
    ]
    assert builder.rejected == 4
    assert all(r.file == "data.csv" for r in builder.rejects)


def test_lines_over_the_line_limit_are_rejected_not_truncated() -> None:
    spec = RequestSpec(model="m", prompt="{t}")
    short = len(build(spec, batch(t=["x"]))[1][0]) - 1
    builder, lines = build(spec, batch(t=["x", "y" * 50, "z"]), max_line_bytes=short + 10)
    assert [json.loads(x)["custom_id"] for x in lines] == ["row-1", "row-3"]
    ((row, code),) = [(r.line, r.code) for r in builder.rejects]
    assert (row, code) == (2, "line_too_large")


def test_keep_ids_returns_the_ids_sent() -> None:
    builder = Builder(
        RequestSpec(model="m", prompt="{t}", id_column="id", on_duplicate_id="suffix"), file="f", max_line_bytes=10**6
    )
    built = builder.build(0, batch(id=["a", "a"], t=["1", "2"]), keep_ids=True)
    assert built.ids == ["a", "a~2"]
    assert built.rows.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoint": "/v1/responses", "prompt": "{t}"}, "--endpoint must be"),
        ({"endpoint": L.EMBEDDINGS}, "needs --input-column"),
        ({}, "need --prompt"),
        ({"prompt": "{t}", "endpoint": L.EMBEDDINGS, "input_column": "t", "labels": ("a",)}, "--labels only applies"),
        ({"prompt": "{t}", "on_duplicate_id": "drop"}, "--on-duplicate-id"),
        ({"prompt": "{t}", "labels": ("a", "a")}, "distinct"),
        ({"prompt": "{t}", "labels": ("a", "")}, "distinct"),
        ({"prompt": "{t}", "body": {"messages": [], "seed": 1}}, "may not set messages"),
    ],
)
def test_spec_refuses_options_that_cannot_work_together(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RequestSpec(model="m", **kwargs)


# --- repeated ids -----------------------------------------------------------------------------------


def track(policy: str, *batches: list[str]) -> tuple[IdTracker, list[list[str]]]:
    import numpy as np
    import polars as pl

    tracker = IdTracker(policy)
    out, row = [], 1
    for ids in batches:
        rows = np.arange(row, row + len(ids), dtype=np.int64)
        out.append(tracker.check(pl.Series("id", ids, pl.String), rows).to_list())
        row += len(ids)
    return tracker, out


def test_suffix_policy_numbers_the_repeats() -> None:
    tracker, out = track("suffix", ["a", "b", "a"], ["a", "c", "b"])
    assert out == [["a", "b", "a~2"], ["a~3", "c", "b~2"]]
    assert tracker.total_repeats == 3


def test_suffix_policy_skips_names_the_data_already_uses() -> None:
    tracker, out = track("suffix", ["a", "a", "a~2", "a~3"])
    assert out == [["a", "a~4", "a~2", "a~3"]]
    assert tracker.total_repeats == 1  # one row repeated an id; only that row was renamed


def test_error_policy_lists_repeating_rows_and_keeps_ids() -> None:
    tracker, out = track("error", ["a", "b"], ["a"], ["a", "c"], ["b"])  # batches wholly made of repeats too
    assert out == [["a", "b"], ["a"], ["a", "c"], ["b"]]
    tracker.finish()
    assert tracker.errors == [(3, 1), (4, 1), (6, 2)]  # (repeating row, the row it repeats)
    assert tracker.total_repeats == 3


@settings(max_examples=150)
@given(
    st.lists(st.sampled_from(["a", "b", "a~2", "a~3", "b~2", "a~2~2", "c"]), max_size=30),
    st.lists(st.integers(1, 29), max_size=4),
)
def test_suffix_policy_always_yields_unique_ids(ids: list[str], splits: list[int]) -> None:
    bounds = [0, *sorted({s for s in splits if s < len(ids)}), len(ids)]
    tracker, out = track("suffix", *[ids[a:b] for a, b in pairwise(bounds) if b > a])
    sent = [x for b in out for x in b]
    assert len(sent) == len(set(sent)) == len(ids)
    renamed = [(old, new) for old, new in zip(ids, sent, strict=True) if old != new]
    assert all(new.startswith(old + "~") and new[len(old) + 1 :].isdigit() for old, new in renamed)
    assert all(new != old for i, (old, new) in enumerate(zip(ids, sent, strict=True)) if old in ids[:i])
    assert tracker.total_repeats == len(renamed)
