"""core.validate and validation.validate_file: every rule of the table fails and passes, nothing crashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldbatch.core.validate import FileValidator, Report, split_lines
from coldbatch.errors import InputError
from coldbatch.protocol import limits as L
from coldbatch.validation import iter_lines, validate_file

CHAT, EMB = L.CHAT, L.EMBEDDINGS


def req(cid: str = "r1", *, url: str = CHAT, model: Any = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    """A valid request; `body` keys replace the defaults (a value of ... removes the key)."""
    base: dict[str, Any] = {"model": model}
    if url == CHAT:
        base["messages"] = [{"role": "user", "content": "hi"}]
    elif url == EMB:
        base["input"] = "hi"
    base.update(body)
    return {"custom_id": cid, "method": "POST", "url": url, "body": {k: v for k, v in base.items() if v is not ...}}


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


#: valid Anthropic Messages params (an Anthropic Message Batch line is {"custom_id", "params"})
ANTHROPIC: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 16,
    "system": "Label it.",
    "messages": [{"role": "user", "content": "hi"}],
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
}


def enc(*objs: Any) -> list[bytes]:
    return [o if isinstance(o, bytes) else json.dumps(o, ensure_ascii=False).encode() for o in objs]


def check(lines: list[bytes], *, size: int | None = None, **kw: Any) -> Report:
    return FileValidator(file="in.jsonl", **kw).feed_many(lines).finish(size=size)


def codes(report: Report) -> list[tuple[str, str | None]]:
    return [(e.code, e.param) for e in report.errors]


# One row per rule of core/validate.py's table: the failing lines, the expected (code, param), and the
# smallest change that makes them pass. Options (models=, limits=, endpoint=) apply to both.
RULES: list[tuple[str, list[bytes], tuple[str, str | None], list[bytes], dict[str, Any]]] = [
    ("json-garbage", enc(b"{not json"), ("invalid_json_line", None), enc(req()), {}),
    ("json-not-object", enc(b"[1, 2]"), ("invalid_json_line", None), enc(req()), {}),
    ("json-bad-utf8", enc(b'{"custom_id": "\xff"}'), ("invalid_json_line", None), enc(req()), {}),
    (
        "missing-custom_id",
        enc(without(req(), "custom_id")),
        ("missing_required_parameter", "custom_id"),
        enc(req()),
        {},
    ),
    ("missing-method", enc(without(req(), "method")), ("missing_required_parameter", "method"), enc(req()), {}),
    ("missing-url", enc(without(req(), "url")), ("missing_required_parameter", "url"), enc(req()), {}),
    ("missing-body", enc(without(req(), "body")), ("missing_required_parameter", "body"), enc(req()), {}),
    ("type-custom_id", enc({**req(), "custom_id": 7}), ("invalid_type", "custom_id"), enc(req("7")), {}),
    ("type-custom_id-empty", enc(req("")), ("invalid_type", "custom_id"), enc(req("x")), {}),
    ("type-body", enc({**req(), "body": "text"}), ("invalid_type", "body"), enc(req()), {}),
    ("type-model", enc(req(model=4)), ("invalid_type", "body.model"), enc(req(model="4")), {}),
    ("type-messages", enc(req(messages="hi")), ("invalid_type", "body.messages"), enc(req()), {}),
    (
        "type-content",
        enc(req(messages=[{"role": "user", "content": 5}])),
        ("invalid_type", "body.messages[0].content"),
        enc(req(messages=[{"role": "user", "content": [{"type": "text", "text": "5"}]}])),
        {},
    ),
    (
        "type-embedding-input",
        enc(req(url=EMB, input={"a": 1})),
        ("invalid_type", "body.input"),
        enc(req(url=EMB, input=[1, 2, 3])),
        {},
    ),
    ("request-method", enc({**req(), "method": "GET"}), ("invalid_request", "method"), enc(req()), {}),
    ("request-model", enc(req(model=...)), ("invalid_request", "body.model"), enc(req()), {}),
    ("request-messages-missing", enc(req(messages=...)), ("invalid_request", "body.messages"), enc(req()), {}),
    ("request-messages-empty", enc(req(messages=[])), ("invalid_request", "body.messages"), enc(req()), {}),
    ("request-input-missing", enc(req(url=EMB, input=...)), ("invalid_request", "body.input"), enc(req(url=EMB)), {}),
    ("request-input-empty", enc(req(url=EMB, input="")), ("invalid_request", "body.input"), enc(req(url=EMB)), {}),
    (
        "request-prompt-empty",
        enc(req(url=L.COMPLETIONS, prompt="")),
        ("invalid_request", "body.prompt"),
        enc(req(url=L.COMPLETIONS, prompt="Once")),
        {},
    ),
    (
        "request-role",
        enc(req(messages=[{"content": "hi"}])),
        ("invalid_request", "body.messages[0]"),
        enc(req(messages=[{"role": "user", "content": "hi"}])),
        {},
    ),
    (
        "request-content",
        enc(req(messages=[{"role": "user"}])),
        ("invalid_request", "body.messages[0].content"),
        enc(req(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": []}])),
        {},
    ),
    ("url-unknown", enc(req(url="/v1/chat")), ("invalid_url", "url"), enc(req()), {}),
    ("url-differs", enc(req("a"), req("b", url=EMB)), ("invalid_url", "url"), enc(req("a"), req("b")), {}),
    ("url-not-batch-endpoint", enc(req(url=EMB)), ("invalid_url", "url"), enc(req(url=CHAT)), {"endpoint": CHAT}),
    (
        "model-not-found",
        enc(req(model="gpt-x")),
        ("model_not_found", "body.model"),
        enc(req()),
        {"models": {"gpt-4o-mini"}},
    ),
    (
        "mismatched-model",
        enc(req("a"), req("b", model="gpt-4o")),
        ("mismatched_model", "body.model"),
        enc(req("a"), req("b")),
        {},
    ),
    ("streaming", enc(req(stream=True)), ("streaming_unsupported", "body.stream"), enc(req(stream=False)), {}),
    ("duplicate-id", enc(req("a"), req("a")), ("duplicate_custom_id", "custom_id"), enc(req("a"), req("A")), {}),
    (
        "line-too-large",
        enc(req(messages=[{"role": "user", "content": "x" * 200}])),
        ("line_too_large", None),
        enc(req()),
        {"limits": L.Limits(max_line_bytes=200)},
    ),
    ("empty-file", [], ("empty_file", None), enc(req()), {}),
    ("blank-file", [b"", b"  ", b"\t"], ("empty_file", None), [b"", *enc(req()), b" "], {}),
    (
        "too-many-tasks",
        enc(req("a"), req("b"), req("c")),
        ("too_many_tasks", None),
        enc(req("a"), req("b")),
        {"limits": L.Limits(max_requests=2)},
    ),
    (
        "too-many-embedding-inputs",
        enc(req("a", url=EMB, input=["x", "y"]), req("b", url=EMB, input="z")),
        ("too_many_tasks", "body.input"),
        enc(req("a", url=EMB, input=[1, 2, 3]), req("b", url=EMB, input="z")),
        {"limits": L.Limits(max_embedding_inputs=2)},
    ),
    (
        "file-too-large",
        enc(req("a"), req("b")),
        ("file_too_large", None),
        enc(req("a")),
        {"limits": L.Limits(max_bytes=len(enc(req("a"))[0]) + 1)},
    ),
    # the request schemas generated from the SDKs (core/bodies.py)
    (
        "schema-role",
        enc(req(messages=[{"role": "bot", "content": "hi"}])),
        ("invalid_value", "body.messages[0].role"),
        enc(req(messages=[{"role": "developer", "content": "hi"}])),
        {},
    ),
    ("schema-type", enc(req(max_tokens="5")), ("invalid_type", "body.max_tokens"), enc(req(max_tokens=5)), {}),
    (
        "schema-int-range",
        enc(req(max_tokens=0)),
        ("integer_below_min_value", "body.max_tokens"),
        enc(req(max_tokens=1)),
        {},
    ),
    (
        "schema-decimal-range",
        enc(req(temperature=2.5)),
        ("decimal_above_max_value", "body.temperature"),
        enc(req(temperature=2)),
        {},
    ),
    (
        "schema-nested-required",
        enc(req(response_format={"type": "json_schema"})),
        ("missing_required_parameter", "body.response_format.json_schema"),
        enc(req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})),
        {},
    ),
    (
        "schema-responses",
        enc(req(url=L.RESPONSES, input="hi", max_output_tokens=5)),
        ("integer_below_min_value", "body.max_output_tokens"),
        enc(req(url=L.RESPONSES, input="hi", max_output_tokens=16)),
        {},
    ),
    (
        "schema-embeddings",
        enc(req(url=EMB, dimensions=0)),
        ("integer_below_min_value", "body.dimensions"),
        enc(req(url=EMB, dimensions=8)),
        {},
    ),
    (
        "anthropic-custom-id",
        enc({"custom_id": "a b", "params": ANTHROPIC}),
        ("invalid_custom_id", "custom_id"),
        enc({"custom_id": "a_b-1", "params": ANTHROPIC}),
        {},
    ),
    (
        "anthropic-role",
        enc({"custom_id": "a", "params": {**ANTHROPIC, "messages": [{"role": "bot", "content": "x"}]}}),
        ("invalid_value", "params.messages[0].role"),
        enc({"custom_id": "a", "params": ANTHROPIC}),
        {},
    ),
    (
        "anthropic-max-tokens",
        enc({"custom_id": "a", "params": without(ANTHROPIC, "max_tokens")}),
        ("missing_required_parameter", "params.max_tokens"),
        enc({"custom_id": "a", "params": ANTHROPIC}),
        {},
    ),
    (
        "anthropic-duplicate",
        enc({"custom_id": "a", "params": ANTHROPIC}, {"custom_id": "a", "params": ANTHROPIC}),
        ("duplicate_custom_id", "custom_id"),
        enc({"custom_id": "a", "params": ANTHROPIC}, {"custom_id": "b", "params": {**ANTHROPIC, "model": "other"}}),
        {},
    ),
]


@pytest.mark.parametrize(("bad", "expected", "good", "options"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_fails_the_bad_lines_and_passes_the_fixed_ones(
    bad: list[bytes], expected: tuple[str, str | None], good: list[bytes], options: dict[str, Any]
) -> None:
    failing = check(bad, **options)
    assert codes(failing) == [expected]
    assert not failing.ok and failing.total_errors == 1
    passing = check(good, **options)
    assert passing.ok, codes(passing)


def test_every_code_in_the_module_table_has_a_failing_case() -> None:
    from coldbatch.core import validate

    table = {
        line.split("|")[1].strip().split()[0]
        for line in (validate.__doc__ or "").splitlines()
        if line.startswith("| ") and not line.startswith("| code")
    }
    assert table == {expected[0] for _, _, expected, _, _ in RULES}


def test_all_errors_are_reported_in_line_order_with_line_numbers() -> None:
    lines = enc(
        without(req("a"), "custom_id"),
        without(req("b"), "method"),
        b"",
        without(req("c"), "url"),
        without(req("d"), "body"),
    )
    report = check(lines)
    assert [(e.line, e.code, e.param) for e in report.errors] == [
        (1, "missing_required_parameter", "custom_id"),
        (2, "missing_required_parameter", "method"),
        (4, "missing_required_parameter", "url"),
        (5, "missing_required_parameter", "body"),
    ]
    assert report.requests == 4


def test_one_line_can_break_several_rules_and_each_is_reported() -> None:
    report = check(enc({"custom_id": "a", "method": "GET", "url": CHAT, "body": {"messages": [], "stream": True}}))
    assert codes(report) == [
        ("invalid_request", "method"),
        ("invalid_request", "body.model"),
        ("invalid_request", "body.messages"),
        ("streaming_unsupported", "body.stream"),
    ]


def test_errors_beyond_max_errors_are_counted_not_listed() -> None:
    report = check([b"nope"] * 30, max_errors=5)
    assert len(report.errors) == 5
    assert report.total_errors == 30
    assert [e.line for e in report.errors] == [1, 2, 3, 4, 5]


def test_duplicate_message_names_the_first_line() -> None:
    report = check(enc(req("a"), req("b"), req("a")))
    (err,) = report.errors
    assert err.line == 3
    assert "line 1" in err.message


def test_render_is_file_line_code_message() -> None:
    report = check(enc(req("a"), {**req("b"), "method": "PUT"}))
    assert report.errors[0].render() == (
        "in.jsonl:2: invalid_request: Invalid method 'PUT': the Batch API only accepts 'POST'. [method]"
    )
    whole = check([])
    assert whole.errors[0].render().startswith("in.jsonl: empty_file: ")


def test_report_describes_the_file() -> None:
    lines = enc(req("a"), req("b"))
    report = check(lines)
    assert (report.requests, report.endpoint, report.model) == (2, CHAT, "gpt-4o-mini")
    assert report.bytes == sum(len(x) + 1 for x in lines)
    data = report.to_json()
    assert data["ok"] is True and data["errors"] == [] and data["total_errors"] == 0


@pytest.mark.parametrize(("extra", "ok"), [(0, True), (1, False)])
def test_file_size_limit_counts_every_byte_of_the_file(tmp_path: Path, extra: int, ok: bool) -> None:
    # CRLF line ends and the final newline are part of the file the provider receives.
    data = b"".join(orjson.dumps(req(f"r{i}")) + b"\r\n" for i in range(3))
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(data)
    report = validate_file(path, limits=L.Limits(max_bytes=len(data) - extra))
    assert report.ok is ok
    assert report.bytes == len(data)
    if not ok:
        assert codes(report) == [("file_too_large", None)]
        assert f"{len(data):,} bytes" in report.errors[0].message


def test_file_size_given_by_the_caller_wins_over_the_counted_one() -> None:
    lines = enc(req())
    assert check(lines, size=10_000, limits=L.Limits(max_bytes=9_999)).errors[0].code == "file_too_large"
    assert check(lines, size=9_999, limits=L.Limits(max_bytes=9_999)).ok


def test_split_lines_tolerates_crlf_blank_lines_and_a_missing_final_newline() -> None:
    assert split_lines(b"a\r\nb\n\nc") == [b"a", b"b", b"", b"c"]
    assert split_lines(b"a\n") == [b"a"]
    assert split_lines(b"") == []


@settings(max_examples=150)
@given(st.binary(max_size=300) | st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"{}", b"x", b" "])).map(b"".join))
def test_iter_lines_reads_a_file_as_split_lines_does(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("lines") / "f.jsonl"
    path.write_bytes(data)
    assert list(iter_lines(path)) == split_lines(data)


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_validator(data: bytes) -> None:
    report = FileValidator(file="x", max_errors=10).feed_many(split_lines(data)).finish(size=len(data))
    assert report.total_errors >= len(report.errors)
    assert isinstance(json.dumps(report.to_json()), str)


_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5)
)
_json = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8
)
_fields = st.sampled_from(
    ["custom_id", "method", "url", "body", "model", "messages", "input", "role", "content", "stream", "prompt"]
)
_urls = st.sampled_from([*L.ENDPOINTS, "/v1/x"]) | _json
_bodies = st.dictionaries(
    _fields, _json | st.lists(st.dictionaries(_fields, _json, max_size=3), max_size=2), max_size=4
)
_requests = st.fixed_dictionaries(
    {},
    optional={
        "custom_id": st.text(max_size=2) | _json,
        "method": st.sampled_from(["POST", "GET"]) | _json,
        "url": _urls,
        "body": _bodies | _json,
    },
)


@settings(max_examples=200)
@given(st.lists(_requests | _json, max_size=6))
def test_request_shaped_garbage_never_crashes_the_validator(objs: list[Any]) -> None:
    report = FileValidator(file="x", models={"gpt-4o-mini"}).feed_many(enc(*objs)).finish()
    assert report.requests == sum(isinstance(o, dict) for o in objs)
    assert all(e.code for e in report.errors)


def test_validate_file_matches_the_in_memory_validator(tmp_path: Path) -> None:
    data = b"\n".join(enc(req("a"), b"oops", req("a"), req("b", model="gpt-4o"))) + b"\n"
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    on_disk = validate_file(path)
    in_memory = check(split_lines(data), size=len(data))
    assert on_disk.errors == [e.__class__(e.line, e.code, e.message, e.param, str(path)) for e in in_memory.errors]
    assert [e.line for e in on_disk.errors] == [2, 3, 4]


def test_validate_file_on_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        validate_file(tmp_path / "nope.jsonl")
