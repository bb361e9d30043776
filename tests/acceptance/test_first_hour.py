"""A new user's first hour (issue 16), through the CLI against real `coldbatch serve` processes on loopback:
one model rule for batch and sync checked before anything is sent, an endpoint the engine lacks refused up
front, exit codes that tell a failed job from a good one, progress that moves while a batch runs, a readable
`status`, and hints that name options the command has."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import openai
import pytest
from _runner_support import coldbatch, echo_server, job_id_from

from coldbatch.cli.exitcodes import NONE_ANSWERED, SOME_UNANSWERED


def _rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"rows-{n}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        w.writerows([[f"r{i}", f"review number {i}"] for i in range(n)])
    return path


def _run(home: Path, srv_url: str, inp: Path, *extra: str) -> tuple[int, str, str]:
    res = coldbatch(
        home,
        "run",
        inp,
        "--out",
        inp.with_suffix(".out.csv"),
        "--base-url",
        srv_url,
        "--api-key",
        "k",
        "--prompt",
        "{text}",
        "--id-column",
        "id",
        "--poll-interval",
        "0.2",
        "-y",
        *extra,
    )
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize("mode", ["batch", "sync"])
def test_a_model_the_target_does_not_serve_is_refused_before_anything_is_sent(tmp_path: Path, mode: str) -> None:
    with echo_server(tmp_path / "srv", extra=["--engine-option", 'models=["echo-small"]']) as srv:
        code, _, err = _run(
            tmp_path / "home", srv.base_url, _rows(tmp_path, 5), "--model", "gpt-4o-mini", "--mode", mode
        )
        assert code == 2, err
        assert "'gpt-4o-mini'" in err and "it serves: echo-small" in err and "Nothing was sent" in err
        assert srv.batches() == [] and srv.files() == []
        with srv.client() as c:  # the server's own sync path follows the same rule as its batch validation
            with pytest.raises(openai.NotFoundError, match="serves: echo-small") as refused:
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert refused.value.code == "model_not_found"
        code, _, err = _run(tmp_path / "home", srv.base_url, _rows(tmp_path, 5), "--mode", mode)
        assert code == 2 and "--model is required with --base-url" in err and "it serves: echo-small" in err
        code, _out, err = _run(
            tmp_path / "home", srv.base_url, _rows(tmp_path, 5), "--model", "echo-small", "--mode", mode
        )
        assert code == 0, err


def test_exit_codes_tell_some_and_all_rows_failed_from_success(tmp_path: Path) -> None:
    inp = _rows(tmp_path, 30)
    with echo_server(tmp_path / "srv", failure_rate=0.4) as srv:
        args = ("--model", "m", "--mode", "sync", "--max-attempts", "1", "--no-cache")
        code, _out, err = _run(tmp_path / "home", srv.base_url, inp, *args)
        assert code == SOME_UNANSWERED, err
        assert re.search(r"exit 4: \d+ of 30 row\(s\) unanswered", err)
        assert _run(tmp_path / "home", srv.base_url, inp, *args, "--fail-on-errors", "100%")[0] == 0
    with echo_server(tmp_path / "srv-all", failure_rate=1.0) as srv:
        code, _, err = _run(
            tmp_path / "home", srv.base_url, inp, "--model", "m", "--mode", "batch", "--max-attempts", "1", "--no-cache"
        )
        assert code == NONE_ANSWERED, err
        assert "no row was answered" in err
    help_text = coldbatch(tmp_path / "home", "run", "--help").stdout
    assert "--fail-on-errors" in help_text and "Exit codes: 0 every row answered" in " ".join(help_text.split())


def test_batch_progress_moves_with_the_providers_counts_and_status_reads_as_text(tmp_path: Path) -> None:
    inp = _rows(tmp_path, 60)
    extra = ["--engine-option", "max_concurrency=4"]
    with echo_server(tmp_path / "srv", latency=0.1, extra=extra) as srv:
        code, out, err = _run(
            tmp_path / "home", srv.base_url, inp, "--model", "m", "--mode", "batch", "--max-tokens", "5"
        )
    assert code == 0, err
    done = [
        (int(a), int(b), int(c))
        for a, b, c in re.findall(r"requests (\d+)/(\d+) done .*?, (\d+) finished in running batches", err)
    ]
    assert any(0 < d < 60 and remote == d for d, _, remote in done), err  # moving before collection
    assert all(total == 60 for _, total, _ in done)
    assert re.search(r"\d+\.\d/s ETA \d\d:\d\d", err)
    assert out.startswith("60 rows → ")  # the summary on its own lines, on stdout
    job = job_id_from(err)
    status = coldbatch(tmp_path / "home", "status", job)
    assert status.returncode == 0
    assert "requests answered: 60 ok, 0 failed" in status.stdout and "{'" not in status.stdout
    assert '"results"' in coldbatch(tmp_path / "home", "status", job, "--json").stdout


def test_sync_progress_counts_answers_as_they_arrive(tmp_path: Path) -> None:
    with echo_server(tmp_path / "srv", latency=0.1, extra=["--engine-option", "max_concurrency=2"]) as srv:
        code, _, err = _run(
            tmp_path / "home", srv.base_url, _rows(tmp_path, 24), "--model", "m", "--mode", "sync", "--concurrency", "2"
        )
    assert code == 0, err
    done = [int(d) for d in re.findall(r"requests (\d+)/24 done", err)]
    assert done[-1] == 24 and any(0 < d < 24 for d in done), err
    assert "units planned" not in err


def test_hints_name_options_the_command_has(tmp_path: Path) -> None:
    with echo_server(tmp_path / "srv") as srv:
        code, _, err = _run(tmp_path / "home", srv.base_url, _rows(tmp_path, 3), "--model", "m")
    assert code == 0, err
    help_text = coldbatch(tmp_path / "home", "run", "--help").stdout
    elsewhere = re.sub(r"`coldbatch (?!run)[^`]*`", "", err)  # a hint may name another command's option
    named = set(re.findall(r"(--[a-z][a-z-]+)", elsewhere))
    assert named, err  # e.g. the max_tokens warning
    assert all(flag in help_text for flag in named), (named, err)


def test_an_output_column_clash_is_refused_before_sending(tmp_path: Path) -> None:
    inp = tmp_path / "labelled.csv"
    inp.write_text("id,text,label\nr1,good,positive\nr2,bad,negative\n", encoding="utf-8")
    with echo_server(tmp_path / "srv") as srv:
        code, _, err = _run(tmp_path / "home", srv.base_url, inp, "--model", "m", "--labels", "positive,negative")
        assert code == 2 and "already has column(s) label" in err and "--output-prefix" in err
        assert srv.batches() == [] and srv.files() == []
        code, _, err = _run(
            tmp_path / "home",
            srv.base_url,
            inp,
            "--model",
            "m",
            "--labels",
            "positive,negative",
            "--output-prefix",
            "cb_",
        )
    assert code == 0, err
    with inp.with_suffix(".out.csv").open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[:3] == ["id", "text", "label"] and "cb_label" in header and "cb_error" in header


def test_an_endpoint_the_engine_lacks_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    chat_only = ["--engine", "llama-cpp", "--engine-option", "embeddings=false", "--engine-workers", "1"]
    with echo_server(tmp_path / "srv", extra=chat_only) as srv:
        code, _, err = _run(
            tmp_path / "home",
            srv.base_url,
            _rows(tmp_path, 5),
            "--endpoint",
            "/v1/embeddings",
            "--input-column",
            "text",
            "--model",
            "SmolLM2-135M-Instruct",
        )
        assert code == 2, err
        assert "does not serve /v1/embeddings (it serves /v1/chat/completions" in err, err
        assert srv.batches() == [] and srv.files() == []
