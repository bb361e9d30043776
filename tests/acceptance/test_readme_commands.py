"""The README's commands and `coldbatch run --help`'s examples, run as written (doc-test style), so they
cannot drift from the code (issue 16).

- README blocks marked `<!-- doctest: NAME -->`: every line is run with bash, in order, in one folder
  holding a copy of examples/; `# exit N` at the end of a line is the exit code it must give (default 0).
  Install lines (`python -m venv ...`) are not run. `JOB` stands for the newest job's id. A `coldbatch
  serve` or `coldbatch worker` line is not started (it serves until stopped): each of its options must
  be one its `--help` lists.
- "first-hour" runs on the embedded default (the real local model); "quick-tour" and the `--help` examples
  run `run`/`resume` against the echo fixture (`COLDBATCH_RUN_ENGINE=echo`, click's environment name for
  `run --engine`), and an example's `--base-url https://api.openai.com/v1` is pointed at a local echo server.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _runner_support import REPO, echo_server, env_for

README = REPO / "README.md"


def _block(name: str) -> list[str]:
    """The bash lines of the code block after `<!-- doctest: NAME`."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"<!-- doctest: {name}")
    body = text[text.index("```bash\n", start) + len("```bash\n") :]
    return body[: body.index("```")].splitlines()


def _commands(lines: list[str]) -> list[tuple[str, int]]:
    """(command, expected exit code) per logical line: continuations joined, comments cut outside quotes."""
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
    out = []
    for line in joined:
        command, comment = _split_comment(line)
        if not command.strip() or command.startswith("python -m venv"):
            continue
        found = re.search(r"\bexit (\d+)", comment)
        out.append((command.strip(), int(found.group(1)) if found else 0))
    return out


def _split_comment(line: str) -> tuple[str, str]:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def _folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "work"
    shutil.copytree(REPO / "examples", work / "examples")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "coldbatch"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m coldbatch "$@"\n')
    wrapper.chmod(0o755)
    env = env_for(tmp_path / "home")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return work, env


def _newest_job(work: Path, env: dict[str, str]) -> str:
    listed = subprocess.run(
        ["coldbatch", "jobs", "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return str(json.loads(listed.stdout)[0]["id"])


def _run_all(commands: list[tuple[str, int]], work: Path, env: dict[str, str]) -> list[str]:
    ran = []
    for command, want in commands:
        if command.startswith(LONG_RUNNING):
            _check_options(command, work, env)
            continue
        if "JOB" in command:
            command = command.replace("JOB", _newest_job(work, env))
        res = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, input="y\n", capture_output=True, text=True, timeout=600
        )
        assert res.returncode == want, f"{command}\nexit {res.returncode}, wanted {want}\n{res.stderr[-3000:]}"
        ran.append(res.stdout + res.stderr)
    return ran


#: commands that serve until stopped: not started; each option they are given must be one they have
LONG_RUNNING = ("coldbatch serve", "coldbatch worker")


def _check_options(command: str, work: Path, env: dict[str, str]) -> None:
    name = command.split()[1]
    help_text = subprocess.run(
        ["coldbatch", name, "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for flag in re.findall(r"\s(--[a-z-]+)", command):
        assert flag in help_text, f"{flag} is not an option of `coldbatch {name}`"


def test_the_first_hour_walkthrough_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")  # the [local] extra: the embedded default's model
    work, env = _folder(tmp_path)
    outputs = _run_all(_commands(_block("first-hour")), work, env)
    text = "\n".join(outputs)
    assert "already has column(s) label" in text and "--output-prefix" in text
    assert "SmolLM2-135M-Instruct" in text and "gpt-4o-mini" in text
    with (work / "labelled.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:8] == [
        "id",
        "source",
        "text",
        "label",
        "cb_custom_id",
        "cb_response",
        "cb_label",
        "cb_confidence",
    ]
    assert len(rows) == 5 and all(r["cb_label"] in ("negative", "positive") and r["cb_error"] == "" for r in rows)
    prepared = json.loads((work / "shards" / "manifest.json").read_text())
    assert prepared["totals"]["requests"] == 2  # two lines, two rows: the quote is text


def test_the_quick_tour_runs_as_written_against_the_echo_fixture(tmp_path: Path) -> None:
    work, env = _folder(tmp_path)
    env["COLDBATCH_RUN_ENGINE"] = env["COLDBATCH_RESUME_ENGINE"] = "echo"
    _run_all(_commands(_block("quick-tour")), work, env)
    with (work / "labelled.csv").open(encoding="utf-8") as fh:
        assert sum(1 for _ in fh) == 201


def test_run_help_examples_run_as_written(tmp_path: Path) -> None:
    work, env = _folder(tmp_path)
    env["COLDBATCH_RUN_ENGINE"] = "echo"
    (work / "reviews.csv").write_text("id,text\nr1,The mic is great.\nr2,It broke.\n", encoding="utf-8")
    (work / "sentences.tsv").write_text('A "great" phone\tpositive\nIt broke\tnegative\n', encoding="utf-8")
    help_text = subprocess.run(
        ["coldbatch", "run", "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    lines = [line.strip() for line in help_text[help_text.index("Examples:") :].splitlines()[1:]]
    examples = _commands(lines[: lines.index("")])
    assert len(examples) == 4
    with echo_server(tmp_path / "srv") as srv:
        examples = [(c.replace("https://api.openai.com/v1", srv.base_url), want) for c, want in examples]
        env["OPENAI_API_KEY"] = "sk-test"
        _run_all(examples, work, env)
    assert (work / "vectors.parquet").exists() and (work / "labelled.csv").exists()
