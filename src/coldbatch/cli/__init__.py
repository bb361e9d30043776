"""The `coldbatch` command. Each command parses options, calls one library function, renders the result.

This package is the only code that prints. Exit codes: 0 success, 1 invalid input or a failed check,
2 usage error, 3 remote/provider failure.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from coldbatch import __version__
from coldbatch.errors import ColdbatchError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ColdbatchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            cause = exc.__cause__
            while cause is not None:
                click.echo(f"  caused by: {type(cause).__name__}: {cause}", err=True)
                cause = cause.__cause__
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "COLDBATCH",
                                           "show_default": True})
@click.version_option(__version__, prog_name="coldbatch")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """coldbatch: prepare, validate, estimate and run LLM batch jobs cheaply and safely."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


from coldbatch.cli import estimate as _estimate  # noqa: E402
from coldbatch.cli import jobs as _jobs  # noqa: E402
from coldbatch.cli import prepare as _prepare  # noqa: E402
from coldbatch.cli import serve as _serve  # noqa: E402
from coldbatch.cli import validate as _validate  # noqa: E402

main.add_command(_prepare.prepare)
main.add_command(_validate.validate)
main.add_command(_estimate.estimate)
main.add_command(_serve.serve)
for _command in _jobs.COMMANDS:
    main.add_command(_command)
