"""`coldbatch validate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from coldbatch.cli import options, render
from coldbatch.cli import providers as PV
from coldbatch.protocol import limits as L
from coldbatch.providers import choose
from coldbatch.providers import kinds as K
from coldbatch.validation import expand_paths, validate_file


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--endpoint", type=click.Choice(L.ENDPOINTS), help="The batch's endpoint (default: first line's url).")
@click.option("--models", help="Comma-separated models the provider serves (default: any).")
@click.option(
    "--max-errors", type=click.IntRange(min=1), default=50, help="Errors listed per file; the rest are counted."
)
@options.limit_options
@PV.provider_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def validate(
    files: tuple[Path, ...],
    endpoint: str | None,
    models: str | None,
    max_errors: int,
    as_json: bool,
    provider: str | None,
    **opts: Any,
) -> None:
    """Lint batch input files (or prepared folders) with the provider's rules. Exit 1 if any is invalid.

    With --provider, its batch limits apply and (anthropic, gemini) every body must translate to its API."""
    allowed = [m.strip() for m in models.split(",")] if models else None
    kind = provider or "openai"
    limits = options.limits_from(opts)
    if provider:
        limits = K.default_limits(
            kind,
            limits,
            requests_given=limits.max_requests != L.MAX_REQUESTS,
            bytes_given=limits.max_bytes != L.MAX_FILE_BYTES,
        )
    reports = [
        validate_file(p, endpoint=endpoint, models=allowed, limits=limits, max_errors=max_errors)
        for p in expand_paths(list(files))
    ]
    for r in reports:
        extra = choose.translation_errors(Path(str(r.file)), kind, max_errors) if r.file else []
        r.errors.extend(extra[: max(0, max_errors - len(r.errors))])
        r.total_errors += len(extra)
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
        click.echo(
            f"{len(reports)} file(s), {total:,} request(s): {verdict}"
            + (f" ({sum(r.total_errors for r in bad):,} error(s) in {len(bad)} file(s))" if bad else ""),
            err=bool(bad),
        )
    sys.exit(1 if bad else 0)
