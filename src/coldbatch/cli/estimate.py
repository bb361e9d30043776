"""`coldbatch estimate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coldbatch.cli import options, render
from coldbatch.cli import providers as PV
from coldbatch.estimate import prices as P
from coldbatch.estimate.api import estimate as run_estimate
from coldbatch.protocol import limits as L
from coldbatch.providers import choose
from coldbatch.runner import home as H
from coldbatch.runner.cache import ResultCache


@click.command()
@click.argument(
    "sources", nargs=-1, required=True, metavar="INPUT|DIR...", type=click.Path(exists=True, path_type=Path)
)
@options.request_options
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Price table TOML (default: the bundled, versioned one).",
)
@click.option(
    "--expected-output-tokens",
    type=click.IntRange(min=0),
    help="Output tokens per request to assume (default: each request's max_tokens).",
)
@click.option("--dedup/--no-dedup", default=True, help="Count each distinct request once in what will be sent.")
@click.option(
    "--cache/--no-cache",
    "use_cache",
    default=True,
    help="Treat requests answered in the result cache ($COLDBATCH_HOME/cache.sqlite3) as not sent.",
)
@PV.provider_option
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate(
    sources: tuple[Path, ...],
    prices: Path | None,
    expected_output_tokens: int | None,
    dedup: bool,
    use_cache: bool,
    as_json: bool,
    provider: str | None,
    **opts: Any,
) -> None:
    """Tokens and cost at sync vs batch prices, for request files, prepared folders, or a dataset.

    With --model (and --prompt or --input-column) INPUT is read as a dataset and built on the fly;
    without, INPUT is batch request JSONL or a folder written by `coldbatch prepare`.
    """
    builds = any(opts.get(k) for k in ("model", "prompt", "input_column"))
    spec = options.spec_from(opts) if builds else None  # --prompt without --model: a UsageError, not a JSON one
    if spec is not None and provider:  # a job this provider cannot answer is refused here too
        choose.resolve(provider, None, spec, L.Limits())
    cache = None
    if use_cache:
        path = H.home() / "cache.sqlite3"
        cache = ResultCache(path) if path.exists() else None
    est = run_estimate(
        list(sources),
        spec=spec,
        prices=P.load(prices),
        expected_output_tokens=expected_output_tokens,
        fmt=options.input_format(opts),
        dedup=dedup,
        cache=cache,
    )
    data = est.to_json()
    if as_json:
        render.emit_json(data)
        return
    _show(data)


#: the table's columns: header, and the key of a model's (or the totals') figures it shows
_COLUMNS = (
    ("requests", "requests"),
    ("distinct", "distinct_requests"),
    ("cached", "cache_hits"),
    ("to send", "requests_to_send"),
    ("input tok", "input_tokens"),
    ("output tok (max)", "output_tokens"),
)
_COSTS = (("sync", "sync_cost_usd"), ("batch", "batch_cost_usd"), ("after dedup+cache", "final_cost_usd"))


def _row(label: str, m: dict[str, Any]) -> list[str]:
    """One line of the table: counts with thousands separators, costs in dollars."""
    return [label, *(f"{m[key]:,}" for _, key in _COLUMNS), *(render.usd(m[key]) for _, key in _COSTS)]


def _show(data: dict[str, Any]) -> None:
    """The estimate as a table per model plus totals, then the saving, context overflows and warnings."""
    rows = [_row(m["model"], m) for m in data["models"]]
    t = data["totals"]
    rows.append(_row("total", t))
    render.table(rows, ["model", *(h for h, _ in _COLUMNS), *(h for h, _ in _COSTS)])
    if t["saving_pct"] is not None:
        click.echo(
            f"saving vs sync: {render.usd(t['saving_usd'])} ({t['saving_pct']}%; batch price alone "
            f"{t['batch_only_saving_pct']}%); prices: table {data['price_table']}"
        )
    if data["over_context_total"]:
        click.echo(
            f"{data['over_context_total']:,} request(s) exceed the model's context window, e.g. "
            f"{data['over_context'][0]['where']}"
        )
    for w in data["warnings"]:
        if w.endswith("set --max-tokens"):  # prepared request files are estimated as they are: say what applies
            w += " (or pass --expected-output-tokens)"
        click.echo(f"warning: {w}", err=True)
