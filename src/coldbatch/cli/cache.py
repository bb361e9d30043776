"""`coldbatch cache stats | clear | prune`: the result cache shared by all jobs."""

from __future__ import annotations

import click

from coldbatch.cli import render
from coldbatch.runner import home as H
from coldbatch.runner.cache import ResultCache


def _cache(max_entries: int | None = None, max_age_days: float | None = None) -> ResultCache:
    return ResultCache(H.home() / "cache.sqlite3", max_entries=max_entries, max_age_days=max_age_days)


@click.group()
def cache() -> None:
    """Inspect or empty the result cache (answers reused across jobs)."""


@cache.command()
@click.option("--json", "as_json", is_flag=True)
def stats(as_json: bool) -> None:
    """How many answers are cached, and how big the cache is."""
    s = _cache().stats()
    if as_json:
        render.emit_json(s)
    else:
        click.echo(f"{s['entries']:,} cached answers, {s['file_bytes']:,} bytes on disk ({s['path']})")


@cache.command()
def clear() -> None:
    """Delete every cached answer."""
    click.echo(f"removed {_cache().clear():,} cached answers")


@cache.command()
@click.option("--max-entries", type=click.IntRange(min=0), help="Keep at most this many (newest) answers.")
@click.option("--max-age-days", type=float, help="Drop answers older than this.")
def prune(max_entries: int | None, max_age_days: float | None) -> None:
    """Apply size and age limits now."""
    click.echo(f"removed {_cache(max_entries, max_age_days).prune():,} cached answers")
