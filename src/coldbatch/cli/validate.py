"""`coldbatch validate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from coldbatch.cli import options, render
from coldbatch.protocol import limits as L
from coldbatch.validation import expand_paths, validate_file


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--endpoint", type=click.Choice(L.ENDPOINTS), help="The batch's endpoint (default: first line's url).")
@click.option("--models", help="Comma-separated models the provider serves (default: any).")
@click.option("--max-errors", type=click.IntRange(min=1), default=50,
              help="Errors listed per file; the rest are counted.")
@options.limit_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def validate(files: tuple[Path, ...], endpoint: str | None, models: str | None, max_errors: int, as_json: bool,
             **opts: Any) -> None:
    """Lint batch input files (or prepared folders) with the provider's rules. Exit 1 if any is invalid."""
    allowed = [m.strip() for m in models.split(",")] if models else None
    reports = [validate_file(p, endpoint=endpoint, models=allowed, limits=options.limits_from(opts),
                             max_errors=max_errors) for p in expand_paths(list(files))]
    bad = [r for r in reports if not r.ok]
    if as_json:
        render.emit_json({"ok": not bad, "files": [r.to_json() for r in reports]})
    else:
        for r in reports:
            for e in r.errors:
                click.echo(e.render())
            if r.total_errors > len(r.errors):
                click.echo(f"{r.file}: … and {r.total_errors - len(r.errors):,} more error(s)")
        total = sum(r.requests for r in reports)
        verdict = "invalid" if bad else "valid"
        click.echo(f"{len(reports)} file(s), {total:,} request(s): {verdict}"
                   + (f" ({sum(r.total_errors for r in bad):,} error(s) in {len(bad)} file(s))" if bad else ""),
                   err=bool(bad))
    sys.exit(1 if bad else 0)
