"""Reading a batch's output and error files (failure classes), and joining results back to OUTPUT."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from coldbatch.builder.spec import RequestSpec
from coldbatch.protocol import limits as L
from coldbatch.runner.ledger import Ledger, Outcome
from coldbatch.runner.outcomes import classify, content_of, read_errors, read_output, transient_status
from coldbatch.runner.output import write_output


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + b"\n")
    return path


def _err_line(cid: str, status: int, code: str | None = None, message: str | None = None) -> dict[str, Any]:
    err = {k: v for k, v in (("code", code), ("message", message)) if v is not None}
    return {"id": "r", "custom_id": cid, "response": {"status_code": status, "body": {"error": err}}, "error": None}


# -- failure classes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_rate_limits_timeouts_and_server_errors_are_transient(status: int) -> None:
    assert transient_status(status)
    o = classify(_err_line("a", status, "x", "try later"), cancelled_by_user=False)
    assert (o.state, o.error_code, o.error_message) == ("retry", "x", "try later")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_are_permanent_and_keep_their_message(status: int) -> None:
    assert not transient_status(status)
    o = classify(_err_line("a", status, "invalid_request", "max_tokens is too large"), cancelled_by_user=False)
    assert (o.state, o.error_code, o.error_message) == ("failed", "invalid_request", "max_tokens is too large")


def test_an_error_without_code_or_message_is_named_by_its_status() -> None:
    o = classify({"custom_id": "a", "response": {"status_code": 400, "body": {}}}, cancelled_by_user=False)
    assert (o.state, o.error_code, o.error_message) == ("failed", "http_400", "HTTP 400")
    o = classify({"custom_id": "a", "response": {"status_code": 500, "body": "oops"}}, cancelled_by_user=False)
    assert (o.state, o.error_code) == ("retry", "http_500")


@pytest.mark.parametrize(
    ("code", "by_user", "state"),
    [
        ("batch_expired", False, "retry"),
        ("batch_expired", True, "retry"),
        ("batch_cancelled", False, "retry"),  # the provider cancelled it: send again
        ("batch_cancelled", True, "failed"),  # the user did: report it
        ("engine_error", False, "retry"),
        ("server_error", False, "retry"),
        ("invalid_request", False, "failed"),
        (None, False, "failed"),
    ],
)
def test_batch_level_errors(code: str | None, by_user: bool, state: str) -> None:
    rec = {"custom_id": "a", "response": None, "error": {"code": code, "message": "m"} if code else None}
    o = classify(rec, cancelled_by_user=by_user)
    assert o.state == state and o.error_code == (code or "unknown_error")


def test_an_engine_error_code_is_transient_whatever_the_status() -> None:
    assert classify(_err_line("a", 400, "engine_error", "gpu fell over"), cancelled_by_user=False).state == "retry"


def test_read_errors_reads_every_line(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "e.jsonl",
        [
            _err_line("a", 500, "engine_error", "boom"),
            _err_line("b", 400, "echo_fail", "no"),
            {"custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": "late"}},
        ],
    )
    got = [(o.custom_id, o.state, o.error_code) for o in read_errors(path, cancelled_by_user=False)]
    assert got == [("a", "retry", "engine_error"), ("b", "failed", "echo_fail"), ("c", "retry", "batch_expired")]


def test_read_output_takes_only_2xx_lines_for_successes(tmp_path: Path) -> None:
    """Some providers put failed requests in the output file too: those must not count as answers."""
    ok = {
        "custom_id": "a",
        "response": {
            "status_code": 200,
            "body": {
                "choices": [{"message": {"content": "positive"}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 8}},
            },
        },
        "error": None,
    }
    path = _jsonl(
        tmp_path / "o.jsonl",
        [
            ok,
            _err_line("b", 500, "server_error", "later"),
            _err_line("c", 400, "content_filter", "blocked"),
            {"custom_id": "d", "response": None, "error": {"code": "batch_expired", "message": "late"}},
        ],
    )
    got = list(read_output(path, L.CHAT))
    assert got[0] == Outcome("a", "ok", "positive", prompt_tokens=12, completion_tokens=3, cached_tokens=8)
    assert [(o.custom_id, o.state, o.error_code) for o in got[1:]] == [
        ("b", "retry", "server_error"),
        ("c", "failed", "content_filter"),
        ("d", "retry", "batch_expired"),
    ]


def test_content_of_each_endpoint() -> None:
    assert content_of(L.CHAT, {"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert content_of(L.CHAT, {"choices": [{"message": {"content": None}}]}) == ""
    assert content_of(L.COMPLETIONS, {"choices": [{"text": "t"}]}) == "t"
    assert content_of(L.EMBEDDINGS, {"data": [{"embedding": [0.5, 1]}]}) == "[0.5,1]"
    assert content_of(L.EMBEDDINGS, {"data": [{"embedding": [1]}, {"embedding": [2]}]}) == "[[1],[2]]"
    assert content_of(L.RESPONSES, {"output": [{"content": [{"text": "a"}, {"text": "b"}]}]}) == "ab"
    assert content_of(L.MODERATIONS, {"results": []}) == '{"results":[]}'


def test_responses_api_usage_is_read(tmp_path: Path) -> None:
    line = {
        "custom_id": "a",
        "response": {
            "status_code": 200,
            "body": {
                "output": [{"content": [{"text": "x"}]}],
                "usage": {"input_tokens": 7, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 5}},
            },
        },
    }
    (o,) = read_output(_jsonl(tmp_path / "o.jsonl", [line]), L.RESPONSES)
    assert (o.content, o.prompt_tokens, o.completion_tokens, o.cached_tokens) == ("x", 7, 2, 5)


# -- OUTPUT -----------------------------------------------------------------------------------------------------
@pytest.fixture
def joined(tmp_path: Path) -> tuple[Ledger, Path, RequestSpec]:
    inp = tmp_path / "in.csv"
    with inp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "error"])  # 'error' clashes with an added column: OUTPUT needs a prefix
        for i, t in enumerate(["good", "", "bad", "later", "good too", "never sent"], 1):
            w.writerow([f"k{i}", t, f"orig{i}"])
    lg = Ledger(tmp_path / "ledger.sqlite3")
    lg.create_job("j", str(inp), str(tmp_path / "out.csv"), {})
    lg.add_units(
        "j", [{"round": 1, "shard": 1, "path": "/x", "requests": 4, "bytes": 1, "sha256": "0" * 64, "model": "m"}]
    )
    lg.collect(
        lg.units("j")[0],
        [
            Outcome("k1", "ok", '{"label": "positive"}', prompt_tokens=9, completion_tokens=4),
            Outcome("k3", "failed", None, "invalid_request", "no"),
            Outcome("k4", "retry", None, "engine_error", "boom"),
            Outcome("k5", "ok", "not json: neutral"),
        ],
    )
    spec = RequestSpec(model="m", prompt="Say {text}", id_column="id", labels=("positive", "neutral", "negative"))
    return lg, inp, spec


def test_output_keeps_input_order_and_columns_and_joins_each_result(
    tmp_path: Path, joined: tuple[Ledger, Path, RequestSpec]
) -> None:
    lg, inp, spec = joined
    out = tmp_path / "out.csv"
    assert write_output(lg, "j", inp, out, spec, prefix="cb_") == {
        "rows": 6,
        "rejected": 1,
        "succeeded": 2,
        "failed": 2,
        "from_cache": 0,
    }
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "id",
        "text",
        "error",
        "cb_custom_id",
        "cb_response",
        "cb_label",
        "cb_confidence",
        "cb_error",
        "cb_attempts",
        "cb_prompt_tokens",
        "cb_completion_tokens",
    ]
    assert [r["id"] for r in rows] == [f"k{i}" for i in range(1, 7)] and rows[0]["error"] == "orig1"
    r1, r2, r3, r4, r5, r6 = rows
    assert (r1["cb_response"], r1["cb_label"], r1["cb_error"], r1["cb_attempts"], r1["cb_prompt_tokens"]) == (
        '{"label": "positive"}',
        "positive",
        "",
        "1",
        "9",
    )
    assert r2["cb_custom_id"] == "" and r2["cb_error"].startswith("empty_input: nothing to send")  # rejected + why
    assert (r3["cb_response"], r3["cb_error"]) == ("", "invalid_request: no")
    assert r4["cb_error"] == "engine_error: boom"
    assert (r5["cb_response"], r5["cb_label"]) == ("not json: neutral", "")  # not one of the labels as given
    assert r6["cb_error"].startswith("not_run")


def test_output_in_jsonl_and_parquet(tmp_path: Path, joined: tuple[Ledger, Path, RequestSpec]) -> None:
    lg, inp, spec = joined
    write_output(lg, "j", inp, tmp_path / "o.jsonl", spec, prefix="cb_")
    rows = [orjson.loads(x) for x in (tmp_path / "o.jsonl").read_bytes().splitlines()]
    assert rows[0]["cb_label"] == "positive" and rows[1]["cb_attempts"] == 0 and rows[3]["cb_response"] is None
    write_output(lg, "j", inp, tmp_path / "o.parquet", spec, prefix="cb_")
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.num_rows == 6 and table.column("cb_label").to_pylist()[0] == "positive"


def test_output_writing_is_atomic_and_sweeps_dead_writers_leftovers(
    tmp_path: Path, joined: tuple[Ledger, Path, RequestSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    lg, inp, spec = joined
    out = tmp_path / "out.csv"
    write_output(lg, "j", inp, out, spec, prefix="cb_")
    before = out.read_bytes()
    dead = tmp_path / ".out.csv.99999999.part"  # a writer killed mid-way (no such pid)
    dead.write_bytes(b"half")
    alive = tmp_path / f".out.csv.{os.getppid()}.part"  # another live process: not ours to remove
    alive.write_bytes(b"busy")

    def broken(self: Ledger, job_id: str, ids: Any, **kw: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(Ledger, "results_for", broken)
    with pytest.raises(OSError):
        write_output(lg, "j", inp, out, spec, prefix="cb_")
    assert out.read_bytes() == before, "a failed write leaves the previous OUTPUT as it was"
    assert not dead.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".part")) == [alive.name]


def test_output_refuses_an_unknown_extension(tmp_path: Path, joined: tuple[Ledger, Path, RequestSpec]) -> None:
    lg, inp, spec = joined
    from coldbatch.errors import UsageError

    with pytest.raises(UsageError, match="--out"):
        write_output(lg, "j", inp, tmp_path / "out.xlsx", spec, prefix="cb_")


def test_output_column_names_do_not_depend_on_the_inputs_columns(
    tmp_path: Path, joined: tuple[Ledger, Path, RequestSpec]
) -> None:
    """Issue 16: an input with an `error` column used to turn every added column into cb_*, silently; now the
    names are fixed, a clash is refused naming the column and the flag, and --output-prefix renames them all."""
    from coldbatch.errors import UsageError

    lg, inp, spec = joined
    with pytest.raises(UsageError, match=r"in\.csv: the input already has column\(s\) error, .*--output-prefix"):
        write_output(lg, "j", inp, tmp_path / "out.csv", spec)
    assert not (tmp_path / "out.csv").exists()
    plain = tmp_path / "plain.csv"
    plain.write_text("id,text\nk1,good\nk2,\nk3,bad\nk4,later\nk5,good too\nk6,never sent\n")
    for prefix, name in (("", "out-plain.csv"), ("ans.", "out-renamed.csv")):
        write_output(lg, "j", plain, tmp_path / name, spec, prefix=prefix)
        with (tmp_path / name).open(newline="") as fh:
            header = next(csv.reader(fh))
        assert header == ["id", "text"] + [
            prefix + c
            for c in (
                "custom_id",
                "response",
                "label",
                "confidence",
                "error",
                "attempts",
                "prompt_tokens",
                "completion_tokens",
            )
        ]
