"""Where coldbatch keeps its state: `COLDBATCH_HOME`, else the per-user app dir (click.get_app_dir)."""

from __future__ import annotations

from pathlib import Path


def home(env_value: str | None) -> Path:
    import click

    return Path(env_value).expanduser() if env_value else Path(click.get_app_dir("coldbatch"))


def job_dir(root: Path, job_id: str) -> Path:
    return root / "jobs" / job_id
