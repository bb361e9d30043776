"""`coldbatch jobs | status | collect`: what the job ledger holds, read without contacting any provider."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from coldbatch.cli import render
from coldbatch.cli.report import status_lines
from coldbatch.errors import InputError
from coldbatch.runner import home as H
from coldbatch.runner.ledger import Ledger
from coldbatch.runner.output_spec import output_kind
from coldbatch.store.records import JobRecord


def _root() -> Path:
    return H.home()


def _ledger() -> Ledger:
    return Ledger(_root() / "ledger.sqlite3")


@click.command()
@click.argument("job_id")
@click.option(
    "--out",
    "-o",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write OUTPUT here instead of the job's own path.",
)
def collect(job_id: str, output: Path | None) -> None:
    """(Re)write a job's OUTPUT from the ledger, without contacting the provider."""
    from coldbatch.runner.report import write_job_output

    ledger = _ledger()
    try:
        job = ledger.job(job_id)
        if job is None:
            raise InputError(f"No job named {job_id!r}; see `coldbatch jobs`.")
        out = output or Path(job.output_path)
        output_kind(out)
        res = write_job_output(ledger, job, _root(), out)
    finally:
        ledger.close()
    click.echo(f"{res['rows']:,} rows → {out}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def jobs(as_json: bool) -> None:
    """List jobs in the ledger, newest first."""
    ledger = _ledger()
    rows = ledger.jobs()
    if as_json:
        render.emit_json([_listed(r) for r in rows])
        return
    render.table(
        [
            [
                r.id,
                r.status,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
                Path(r.output_path).name,
            ]
            for r in rows
        ],
        ["job", "status", "created", "output"],
    )


@click.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the job, its units and its results as JSON.")
def status(job_id: str | None, as_json: bool) -> None:
    """Show a job's units, batches and results so far (from the ledger; no network). JOB_ID: default the
    newest job."""
    ledger = _ledger()
    if job_id is None:
        newest = ledger.jobs()
        if not newest:
            raise InputError("No job yet; `coldbatch run` starts one.")
        job_id = newest[0].id
    job = ledger.job(job_id)
    if job is None:
        raise InputError(f"No job named {job_id!r}; see `coldbatch jobs`.")
    units = ledger.units(job_id)
    summary = ledger.summary(job_id)
    if as_json:
        render.emit_json({"job": job.to_json(), "units": [u.to_json() for u in units], "results": summary})
        return
    click.echo(f"job {job_id}: {job.status}; input {job.input_path} → {job.output_path}")
    render.table(
        [
            [
                str(u.id),
                str(u.round),
                u.state,
                u.batch_status or "",
                u.batch_id or "",
                f"{u.requests:,}",
            ]
            for u in units
        ],
        ["unit", "round", "state", "batch status", "batch", "requests"],
    )
    for line in status_lines(job, summary):
        click.echo(line)


def _listed(job: JobRecord) -> dict[str, Any]:
    """A job as `coldbatch jobs --json` lists it (the columns it always listed: no options, estimate, report)."""
    return {k: v for k, v in job.to_json().items() if k not in ("options", "estimate", "report")}


COMMANDS = [collect, jobs, status]
