"""The console entry point ends the process without tearing the interpreter down (cli.entry): what a user
sees of a command — its output, its exit status, what `atexit` owes — must be exactly what a normal exit gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _cb(*args: str, code: str = "from coldbatch.cli import entry; entry()") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}  # the same layout in every run
    cmd = [sys.executable, "-c", code, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)


def test_the_whole_output_reaches_a_pipe() -> None:
    # --help is long and goes through a buffered pipe: all of it must arrive, as click renders it
    proc = _cb("run", "--help")
    assert proc.returncode == 0, proc.stderr
    normal = _cb("run", "--help", code="from coldbatch.cli import main; main()")  # the interpreter's own exit
    assert proc.stdout == normal.stdout and "Usage:" in proc.stdout and len(proc.stdout) > 4_000


def test_exit_statuses_are_the_commands(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.csv"
    proc = _cb("prepare", str(missing), "-o", str(tmp_path / "out"), "--prompt", "{text}", "--model", "m")
    assert proc.returncode == 1, proc.stderr  # input refused
    assert "no-such.csv: no such file" in proc.stderr
    proc = _cb("no-such-command")
    assert proc.returncode == 2 and "No such command" in proc.stderr
    # a message given to sys.exit is printed and ends with 1, as a normal exit does
    proc = _cb(code="import sys; from coldbatch import cli; cli.main = lambda: sys.exit('gone wrong'); cli.entry()")
    assert proc.returncode == 1 and "gone wrong" in proc.stderr


def test_atexit_work_still_runs(tmp_path: Path) -> None:
    mark = tmp_path / "atexit-ran"
    code = (
        "import atexit, pathlib\n"
        f"atexit.register(pathlib.Path({str(mark)!r}).write_text, 'yes')\n"
        "from coldbatch.cli import entry; entry()"
    )
    proc = _cb("--version", code=code)
    assert proc.returncode == 0 and "coldbatch" in proc.stdout
    assert mark.read_text() == "yes"


def test_a_live_thread_gets_the_normal_exit(tmp_path: Path) -> None:
    # a thread still working when the command returns is joined, as a normal exit would: its file is complete
    out = tmp_path / "late.txt"
    code = (
        "import threading, time, pathlib\n"
        f"def late(): time.sleep(0.5); pathlib.Path({str(out)!r}).write_text('done')\n"
        "threading.Thread(target=late).start()\n"
        "from coldbatch.cli import entry; entry()"
    )
    proc = _cb("--version", code=code)
    assert proc.returncode == 0
    assert out.read_text() == "done"


def test_the_command_runs_with_the_cyclic_gc_on() -> None:
    # entry turns the GC off only while the command's modules import (cli._resume_gc): a run of hours with the
    # GC left off would keep every reference cycle it made. The imports' objects are frozen (not walked again).
    code = (
        "import gc, sys, types, click\n"
        "from coldbatch import cli\n"
        "@click.command()\n"
        "def probe(): print(gc.isenabled(), gc.get_freeze_count() > 10_000)\n"
        "mod = types.ModuleType('probe_mod'); mod.probe = probe; sys.modules['probe_mod'] = mod\n"
        "cli.COMMANDS['probe'] = 'probe_mod:probe'\n"
        "cli.entry()"
    )
    proc = _cb("probe", code=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
    plain = _cb("probe", code=code.replace("cli.entry()", "cli.main()"))  # main itself leaves the GC alone
    assert plain.returncode == 0 and plain.stdout.split() == ["True", "False"], plain.stderr
