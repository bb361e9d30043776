"""`coldbatch ui`: the job dashboard on this machine (loopback only; see server/jobs_ui.py)."""

from __future__ import annotations

import click

from coldbatch.cli.serve import _is_loopback
from coldbatch.errors import UsageError
from coldbatch.runner import home as H


@click.command()
@click.option("--host", default="127.0.0.1", help="Loopback address to bind (the page has no login).")
@click.option("--port", default=8001, type=int)
def ui(host: str, port: int) -> None:
    """Serve a live, read-only dashboard of the jobs in the ledger ($COLDBATCH_HOME) on loopback."""
    import uvicorn

    from coldbatch.server.jobs_ui import create_jobs_app

    if not _is_loopback(host):
        raise UsageError(f"coldbatch ui binds loopback only (it has no login): {host} is not a loopback address.")
    ledger = H.home() / "ledger.sqlite3"
    click.echo(f"coldbatch ui: jobs of {ledger} at http://{host}:{port}/", err=True)
    uvicorn.run(create_jobs_app(ledger), host=host, port=port, log_level="warning")
