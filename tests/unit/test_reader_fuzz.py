"""Fuzzing `validate` and the JSONL dataset reader with hypothesis (issue 15, "beyond the list"): whatever the
bytes, validation returns a report (never raises, never hangs) and the reader yields rows or one InputError.
Budget: 150 examples each with a 2 s deadline, a few seconds in CI."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldbatch.dataset import read
from coldbatch.errors import InputError
from coldbatch.validation import validate_file

FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
_INT64 = st.integers(-(2**63), 2**63 - 1)
_SCALAR = st.none() | st.booleans() | _INT64 | st.floats(allow_nan=False) | st.text(max_size=20)
_JSON = st.recursive(
    _SCALAR,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
_REQUEST = st.fixed_dictionaries(
    {
        "custom_id": st.one_of(st.text(max_size=10), st.integers(-5, 5)),
        "method": st.sampled_from(["POST", "GET", ""]),
        "url": st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v2/x", ""]),
        "body": st.one_of(_JSON, st.fixed_dictionaries({"model": st.text(max_size=8), "messages": _JSON})),
    }
)
_LINE = st.one_of(_REQUEST.map(orjson.dumps), _JSON.map(orjson.dumps), st.binary(max_size=60))


@FAST
@given(lines=st.lists(_LINE, max_size=20), newline=st.sampled_from([b"\n", b"\r\n"]))
def test_validate_reports_on_any_bytes(tmp_path: Path, lines: list[bytes], newline: bytes) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(newline.join(x.replace(b"\n", b" ") for x in lines))
    report = validate_file(path)
    assert report.total_errors >= len(report.errors) and report.requests >= 0
    if report.ok:
        assert report.requests == sum(1 for x in lines if x.strip())


@FAST
@given(lines=st.lists(st.one_of(_JSON.map(orjson.dumps), st.binary(max_size=40)), max_size=20))
def test_the_jsonl_reader_yields_rows_or_one_input_error(tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(x.replace(b"\n", b" ") for x in lines))
    try:
        rows = [r for _, b in read.open_dataset(path).batches() for r in b.to_pylist()]
    except InputError:
        return
    assert len(rows) <= len(lines)
