"""The `coldbatch` command. Each command parses options, calls one library function, renders the result.

This package is the only code that prints. Exit codes: 0 success, 1 invalid input or a failed check,
2 usage error, 3 remote/provider failure.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import os
import sys
import threading
from typing import Any

import click

from coldbatch import __version__
from coldbatch.core.text import printable
from coldbatch.errors import ColdbatchError

ERROR_CHARS = 4_000  #: of an error message (some list many rows; none needs a whole input file)
_gc_paused = False  #: `entry` turned the cyclic GC off for the command's imports (see `_resume_gc`)

#: command name -> "module:attribute"; modules are imported only when their command runs (a `prepare`
#: does not pay for importing the server, the runner or the openai SDK).
COMMANDS: dict[str, str] = {
    "prepare": "coldbatch.cli.prepare:prepare",
    "validate": "coldbatch.cli.validate:validate",
    "estimate": "coldbatch.cli.estimate:estimate",
    "run": "coldbatch.cli.jobs:run",
    "jobs": "coldbatch.cli.ledger_cmds:jobs",
    "status": "coldbatch.cli.ledger_cmds:status",
    "resume": "coldbatch.cli.jobs:resume",
    "cancel": "coldbatch.cli.jobs:cancel",
    "collect": "coldbatch.cli.ledger_cmds:collect",
    "serve": "coldbatch.cli.serve:serve",
    "worker": "coldbatch.cli.worker:worker",
    "migrate": "coldbatch.cli.worker:migrate",
    "cache": "coldbatch.cli.cache:cache",
    "ui": "coldbatch.cli.ui:ui",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        _resume_gc()
        return command  # type: ignore[no-any-return]

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ColdbatchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {printable(str(exc), ERROR_CHARS, keep_lines=True)}", err=True)  # may quote input
            cause = exc.__cause__
            while cause is not None:
                click.echo(f"  caused by: {type(cause).__name__}: {printable(str(cause), ERROR_CHARS)}", err=True)
                cause = cause.__cause__
            sys.exit(exc.exit_code)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "COLDBATCH", "show_default": True},
)
@click.version_option(__version__, prog_name="coldbatch")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """coldbatch: prepare, validate, estimate and run LLM batch jobs cheaply and safely."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def entry() -> None:
    """The console script and `python -m coldbatch`: run one command, then end the process at once.

    A normal exit tears the interpreter down object by object: 0.3 s of a 3 s `coldbatch run` goes to
    freeing the openai SDK's ~500 pydantic models and the columnar stack, after the job is done. When the
    command has returned and only the main thread is left, everything a clean exit still owes is in
    `atexit` (logging, multiprocessing's children, OpenTelemetry's flush) and in the standard streams; both
    are run and flushed, then the process ends. Every file the commands write is closed by its own code
    (shards, OUTPUT, the ledger's commits), so nothing is cut short. If another thread is still alive, the
    normal exit joins it first. Tests call `main` itself, which never ends the process.
    """
    global _gc_paused
    _gc_paused = gc.isenabled()
    gc.disable()  # until the command's modules are imported: see _resume_gc
    try:
        main()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if threading.active_count() > 1:
        sys.exit(code)
    status = _exit_status(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`coldbatch jobs | head`): nothing left to say
            status = status or 1
    os._exit(status)


def _resume_gc() -> None:
    """After `entry` imported a command's modules with the cyclic GC off: freeze what they made and turn the
    GC back on. Importing the openai SDK builds ~500 pydantic models, hundreds of thousands of objects that
    live as long as the process; the GC kept walking them while they were made (~80 ms of a `coldbatch run`'s
    ~0.75 s of imports on a 2-core EPYC VM, 2026-12-04), and frozen they are not walked again by the run's
    full collections. Imports make next to no garbage (the GC off for them: +0.5 MB RSS). `main` called
    directly (tests, a Python caller) never turns the GC off, so this leaves it as it is there."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def _exit_status(code: int | str | None) -> int:
    """What `sys.exit(code)` would end with: None is 0, a message is printed and ends with 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
