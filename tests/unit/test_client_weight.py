"""What `coldbatch run` loads: libraries that only some jobs need stay unimported by the others (issue 11).

Each check runs a fresh interpreter (an import, once made, stays for the process) with stderr a pipe, as in
a log or CI, where the progress display prints plain lines."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

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
