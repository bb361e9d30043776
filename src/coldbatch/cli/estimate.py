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
    rows = [
        [
            m["model"],
            f"{m['requests']:,}",
            f"{m['distinct_requests']:,}",
            f"{m['cache_hits']:,}",
            f"{m['requests_to_send']:,}",
            f"{m['input_tokens']:,}",
            f"{m['output_tokens']:,}",
            render.usd(m["sync_cost_usd"]),
            render.usd(m["batch_cost_usd"]),
            render.usd(m["final_cost_usd"]),
        ]
        for m in data["models"]
    ]
    t = data["totals"]
    rows.append(
        [
            "total",
            f"{t['requests']:,}",
            f"{t['distinct_requests']:,}",
            f"{t['cache_hits']:,}",
            f"{t['requests_to_send']:,}",
            f"{t['input_tokens']:,}",
            f"{t['output_tokens']:,}",
            render.usd(t["sync_cost_usd"]),
            render.usd(t["batch_cost_usd"]),
            render.usd(t["final_cost_usd"]),
        ]
    )
    render.table(
        rows,
        [
            "model",
            "requests",
            "distinct",
            "cached",
            "to send",
            "input tok",
            "output tok (max)",
            "sync",
            "batch",
            "after dedup+cache",
        ],
    )
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
