from __future__ import annotations

from coldbatch.runner.ledger import Outcome
from coldbatch.runner.structured import check, columns, problem

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["neg", "pos"]}, "score": {"type": "number"}},
    "required": ["sentiment"],
    "additionalProperties": False,
}


def test_problem_explains_what_is_wrong() -> None:
    assert problem('{"sentiment": "pos", "score": 0.5}', SCHEMA) is None
    assert "not JSON" in (problem('{"sentiment": "po', SCHEMA) or "")
    assert "'meh' is not one of" in (problem('{"sentiment": "meh"}', SCHEMA) or "")
    assert "required" in (problem("{}", SCHEMA) or "")


def test_invalid_answers_are_retried_then_reported_with_the_raw_text() -> None:
    bad = Outcome("k", "ok", '{"sentiment": "meh"}', prompt_tokens=3, completion_tokens=2)
    first = check(bad, SCHEMA, attempt=1, retries=1)
    assert first.state == "retry" and first.error_code == "invalid_output" and first.content == bad.content
    last = check(bad, SCHEMA, attempt=2, retries=1)
    assert last.state == "failed" and last.content == bad.content and last.prompt_tokens == 3
    good = Outcome("k", "ok", '{"sentiment": "pos"}')
    assert check(good, SCHEMA, attempt=1, retries=1) is good
    assert check(bad, None, attempt=1, retries=1) is bad


def test_columns_follow_the_schema_properties() -> None:
    assert columns('{"sentiment": "pos", "score": 0.5}', SCHEMA) == {"sentiment": "pos", "score": "0.5"}
    assert columns("not json", SCHEMA) == {"sentiment": None, "score": None}
