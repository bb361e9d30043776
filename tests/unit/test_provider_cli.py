"""`--provider` on prepare, validate and estimate, as a user types them (click's runner, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from click.testing import CliRunner

from coldbatch.cli import main


def _csv(path: Path, rows: int) -> Path:
    path.write_text("id,text\n" + "".join(f"r{i},text {i}\n" for i in range(rows)), encoding="utf-8")
    return path


def test_prepare_cuts_shards_at_each_providers_own_request_limit(tmp_path: Path) -> None:
    data = _csv(tmp_path / "in.csv", 5)
    runner = CliRunner()
    for provider, cap in (("openai", 50_000), ("anthropic", 100_000), ("gemini", 100_000)):
        out = tmp_path / provider
        res = runner.invoke(
            main, ["prepare", str(data), "--out", str(out), "-m", "m", "-p", "{text}", "--provider", provider, "--json"]
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["limits"]["max_requests"] == cap


def test_prepare_infers_anthropic_from_a_claude_model_and_refuses_what_it_cannot_send(tmp_path: Path) -> None:
    data = _csv(tmp_path / "in.csv", 3)
    runner = CliRunner()
    res = runner.invoke(
        main, ["prepare", str(data), "--out", str(tmp_path / "a"), "-m", "claude-haiku-4-5", "-p", "{text}", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["limits"]["max_requests"] == 100_000
    res = runner.invoke(
        main,
        [
            "prepare",
            str(data),
            "--out",
            str(tmp_path / "b"),
            "-m",
            "claude-haiku-4-5",
            "-p",
            "{text}",
            "--temperature",
            "0.7",
        ],
    )
    assert res.exit_code == 2 and "temperature 0.7" in res.output
    res = runner.invoke(
        main,
        [
            "estimate",
            str(data),
            "-m",
            "m",
            "--endpoint",
            "/v1/embeddings",
            "--input-column",
            "text",
            "--provider",
            "gemini",
        ],
    )
    assert res.exit_code == 2 and "only chat requests" in res.output


def test_validate_reports_the_lines_a_provider_cannot_express_with_file_and_line(tmp_path: Path) -> None:
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        },
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "seed": 3},
        },
    ]
    f = tmp_path / "batch.jsonl"
    f.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    runner = CliRunner()
    assert runner.invoke(main, ["validate", str(f)]).exit_code == 0  # fine for OpenAI
    res = runner.invoke(main, ["validate", str(f), "--provider", "anthropic"])
    assert res.exit_code == 1
    assert f"{f}:2: not_anthropic: request field 'seed' has no Anthropic equivalent" in res.output
    assert runner.invoke(main, ["validate", str(f), "--provider", "gemini"]).exit_code == 0  # Gemini has a seed
