"""Where coldbatch keeps its state: `COLDBATCH_HOME`, else the per-user app dir (click.get_app_dir).

The one place that reads `COLDBATCH_HOME` (the CLI's commands each read it before, issue 11)."""

from __future__ import annotations

import os
from pathlib import Path

ENV: str = "COLDBATCH_HOME"


def home(env_value: str | None = None) -> Path:
    """The state folder: `env_value` when given, else `$COLDBATCH_HOME`, else the per-user app dir."""
    import click

    value = env_value or os.environ.get(ENV)
    return Path(value).expanduser() if value else Path(click.get_app_dir("coldbatch"))


def job_dir(root: Path, job_id: str) -> Path:
    return root / "jobs" / job_id
