"""What `coldbatch run` loads: libraries that only some jobs need stay unimported by the others (issue 11).

Each check runs a fresh interpreter (an import, once made, stays for the process) with stderr a pipe, as in
a log or CI, where the progress display prints plain lines."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
from _runner_support import TWEETS, echo_server, env_for, read_csv

#: loaded only by the jobs that need them: sync mode (httpx), schema answers (jsonschema), Parquet files,
#: a terminal's live progress bar (rich), a job of more than a few thousand texts (tiktoken's full table)
ONLY_SOME_JOBS = ("httpx", "jsonschema", "pyarrow.parquet", "rich", "tiktoken_ext.openai_public")


def _loaded(code: str) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    probe = (
        f"{code}\nimport sys, orjson\nprint(orjson.dumps({{m: m in sys.modules for m in {ONLY_SOME_JOBS!r}}}).decode())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=env, check=True, timeout=120)
    return orjson.loads(out.stdout.splitlines()[-1])


def test_the_run_command_and_the_job_api_load_none_of_them() -> None:
    assert _loaded("import coldbatch.cli.jobs, coldbatch.job, coldbatch.runner.orchestrator") == dict.fromkeys(
        ONLY_SOME_JOBS, False
    )


def test_plain_progress_lines_need_no_rich() -> None:
    code = (
        "from coldbatch.cli.progress import ProgressDisplay\n"
        "d = ProgressDisplay()\n"
        "d('progress', {'requests': 10, 'succeeded': 4})\n"
        "d('created', {'unit': 1})\n"
        "d.close()"
    )
    assert _loaded(code)["rich"] is False


def test_a_small_estimate_counts_without_the_full_table() -> None:
    code = (
        "from coldbatch.estimate import tokens as T\n"
        "c = T.counter('o200k_base', texts=3)\n"
        "assert c.count_many(['hello world', 'Tweet: @united thanks', '']) == [2, 6, 0], c\n"
    )
    assert _loaded(code)["tiktoken_ext.openai_public"] is False


def _pool_after(code: str, env: dict[str, str] | None = None) -> str:
    """The Arrow pool a fresh interpreter allocates from after `code` (the last line it prints)."""
    probe = f"{code}\nimport pyarrow as pa\nprint(pa.default_memory_pool().backend_name)"
    full = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"} | (env or {})
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=full, check=True, timeout=120)
    return out.stdout.decode().splitlines()[-1]


def _cli(*args: str) -> str:
    """Code that runs one coldbatch command in-process (its exit status does not matter here)."""
    head = "from click.testing import CliRunner\nfrom coldbatch.cli import main\n"
    return f"{head}CliRunner().invoke(main, {list(args)!r})"


def test_a_small_run_allocates_arrow_buffers_from_the_system_pool(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """mimalloc kept ~15 MB more of a 1,000-row run's peak; a large input keeps it (prepare's speed)."""
    small, home = tmp_path / "small.csv", {"COLDBATCH_HOME": str(tmp_path / "home")}
    small.write_text("text\nhello\nworld\n")
    job = ["--model", "m", "--prompt", "{text}"]
    run = _cli("run", str(small), "--out", str(tmp_path / "out.csv"), *job, "--base-url", "http://127.0.0.1:9/v1",
               "--api-key", "k", "--yes")  # fmt: skip
    assert _pool_after(run, home) == "system"
    assert _pool_after(_cli("prepare", str(small), "-o", str(tmp_path / "shards"), *job), home) == "system"
    large = tmp_path / "large.csv"
    with large.open("wb") as fh:
        fh.truncate(5 << 20)  # over SMALL_INPUT_BYTES (sparse: no 5 MB written)
    pick = "from coldbatch._alloc import small_input_pool\nsmall_input_pool({!r})"
    assert _pool_after(pick.format(str(large))) == "mimalloc"
    assert _pool_after(pick.format(str(small))) == "system"
    assert _pool_after(pick.format(str(small)), {"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == "mimalloc"
    assert _pool_after(pick.format(str(tmp_path / "missing.csv"))) == "mimalloc"


def _tweets(dst: Path, n: int) -> Path:
    """The first `n` airline tweets (a synthetic stand-in where ../shared is not there), as a CSV file."""
    if TWEETS.exists():
        with TWEETS.open(newline="", encoding="utf-8") as fh:
            rows = [row for _, row in zip(range(n + 1), csv.reader(fh), strict=False)]
    else:
        rows = [["tweet_id", "text"], *([str(i), f'tweet {i}, "quoted"\nand wrapped'] for i in range(n))]
    with dst.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return dst


#: the columnar stack: a small job (a CSV/TSV/JSONL input of at most _alloc.SMALL_INPUT_BYTES) needs none of it
COLUMNAR = ("numpy", "polars", "pyarrow")


def test_a_small_batch_run_loads_no_columnar_library(tmp_path: Path) -> None:
    """`coldbatch run --mode batch` on 200 tweets against a local echo server, start to OUTPUT, in a fresh
    interpreter: what sys.modules holds when the command is done (the console script's atexit hooks run)."""
    data, out, home = _tweets(tmp_path / "tweets.csv", 200), tmp_path / "out.csv", tmp_path / "home"
    with echo_server(tmp_path / "srv") as srv:
        argv = ["coldbatch", "run", str(data), "--out", str(out), "-m", "gpt-4o-mini", "-p", "Tweet: {text}"]
        argv += ["--mode", "batch", "--base-url", srv.base_url, "--api-key", "k", "--yes", "--poll-interval", "0.2"]
        probe = (
            "import atexit, sys\n"
            f"atexit.register(lambda: print('LOADED', sorted(m for m in {COLUMNAR!r} if m in sys.modules)))\n"
            f"sys.argv = {argv!r}\n"
            "from coldbatch.cli import entry\n"
            "entry()\n"
        )
        res = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env_for(home), timeout=300
        )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(read_csv(out)) == 200 and all(r["response"] for r in read_csv(out))
    loaded = [line for line in res.stdout.splitlines() if line.startswith("LOADED ")]
    assert loaded == ["LOADED []"], res.stdout[-2000:]
