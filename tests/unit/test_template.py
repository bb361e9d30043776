"""core.template: `{column}` placeholders, `{{`/`}}` literals, and errors that name what is wrong."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldbatch.core import template as tpl
from coldbatch.errors import UsageError


def test_parse_splits_literals_and_columns() -> None:
    t = tpl.parse("Sentiment of {text} by {name}:")
    assert t.pieces == ("Sentiment of ", ("text",), " by ", ("name",), ":")
    assert t.columns == ["text", "name"]


def test_doubled_braces_are_literal_braces() -> None:
    t = tpl.parse('Answer {{"label": ...}} for {text}')
    assert t.columns == ["text"]
    assert t.render({"text": "hi"}) == 'Answer {"label": ...} for hi'


def test_render_treats_none_as_empty_and_keeps_repeated_columns() -> None:
    t = tpl.parse("{a}-{b}-{a}")
    assert t.render({"a": "x", "b": None}) == "x--x"
    assert t.columns == ["a", "b", "a"]


@pytest.mark.parametrize("source", ["{text", "text}", "{text:>10}", "{text!r}", "{}", "a {} b"])
def test_malformed_templates_are_usage_errors_that_quote_the_template(source: str) -> None:
    with pytest.raises(UsageError) as info:
        tpl.parse(source)
    assert repr(source) in str(info.value)


def test_missing_columns_are_named_with_the_available_ones() -> None:
    t = tpl.parse("{text} / {lang} / {mood}")
    with pytest.raises(UsageError) as info:
        tpl.check_columns(t, ["id", "text"], file="data.csv", option="--prompt")
    msg = str(info.value)
    assert msg.startswith("--prompt uses column(s) 'lang', 'mood' that data.csv does not have")
    assert msg.endswith("available columns: id, text")
    tpl.check_columns(t, ["text", "lang", "mood"], file="data.csv", option="--prompt")  # no error


_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_ ]{0,8}", fullmatch=True)
_literals = st.text(max_size=12).map(lambda s: s.replace("{", "{{").replace("}", "}}"))


@settings(max_examples=150)
@given(
    st.lists(st.tuples(_literals, _names), max_size=4),
    _literals,
    st.dictionaries(_names, st.text(max_size=10), max_size=6),
)
def test_render_agrees_with_str_format(parts: list[tuple[str, str]], tail: str, row: dict[str, str]) -> None:
    source = "".join(f"{lit}{{{name}}}" for lit, name in parts) + tail
    full = {name: row.get(name, "v") for _, name in parts}
    t = tpl.parse(source)
    assert t.columns == [name for _, name in parts]
    assert t.render(full) == source.format(**full)
