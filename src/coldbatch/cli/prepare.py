"""`coldbatch prepare`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coldbatch._alloc import small_input_pool
from coldbatch.builder.api import prepare as run_prepare
from coldbatch.cli import options, render
from coldbatch.cli import providers as PV
from coldbatch.providers import choose


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the shards and manifest.json (replaced atomically).",
)
@options.request_options
@options.limit_options
@PV.provider_option
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def prepare(input_path: Path, out: Path, as_json: bool, provider: str | None, **opts: Any) -> None:
    """Turn a CSV/TSV/JSONL/Parquet dataset into provider-ready batch request shards.

    Shards are OpenAI batch lines for every provider, cut within --provider's limits; `run` translates
    them for Anthropic and Gemini as it submits (a body they cannot express is refused here)."""
    small_input_pool(input_path)
    spec = options.spec_from(opts)
    _, limits, _ = choose.resolve(provider, None, spec, options.limits_from(opts))
    result = run_prepare(input_path, out, spec, limits=limits, fmt=options.input_format(opts))
    m = result.manifest
    if as_json:
        render.emit_json(m)
        return
    t = m["totals"]
    click.echo(
        f"{t['rows']:,} rows → {t['requests']:,} requests in {t['shards']} shard(s), "
        f"{t['bytes']:,} bytes → {result.out}"
    )
    if t["rejected"]:
        click.echo(f"{t['rejected']:,} row(s) not sent: see {result.out / str(m['rejects'])}")
    if t["renamed_ids"]:
        click.echo(f"{t['renamed_ids']:,} repeated id(s) sent as 'ID~n'")
    if m["repaired_cells"]:
        click.echo(f"{len(m['repaired_cells']):,} cell(s) were not valid UTF-8 and were repaired (manifest.json)")
