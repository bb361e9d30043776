"""What every phase of a run shares: `RunContext` (fixed for the run) and `RunState` (this process's memory).

The runner is split by phase (`prepare`, `submit`, `collect`, `retry`, `report`, and the modes that drive
them: `batch_mode`, `sync_mode`); each phase is functions of these two objects instead of methods of one
class, so a reader sees from a signature what a step may touch. Everything durable is in the ledger;
`RunState` holds only what one process learns while it runs (which intents it wrote itself, what it last
polled) and is lost, harmlessly, with the process: a resume starts from an empty one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldbatch.core.status import TERMINAL as BATCH_TERMINAL
from coldbatch.estimate import prices as P
from coldbatch.providers.base import BatchProvider
from coldbatch.runner import ledger as LG
from coldbatch.runner.options import RunOptions

TERMINAL = BATCH_TERMINAL  #: batch statuses after which nothing changes (core/status.py spells them)
#: job statuses after a user's cancel: nothing new is sent, whatever runs is cancelled, the rest is reported
CANCELLED = ("cancelling", "cancelled")
#: job statuses in which nothing new is submitted (a cancel, or a deadline rescue that took over)
WINDING_DOWN = (*CANCELLED, "rescued")
Events = Callable[[str, dict[str, Any]], None]
Sleep = Callable[[float], Awaitable[Any]]


def silent(kind: str, data: dict[str, Any]) -> None:
    """The default `on_event`: nobody listens."""


@dataclass(frozen=True)
class RunContext:
    """One job's run: where it is recorded, where it is sent, how it was asked for. Nothing here changes
    while the run goes on (a new `opts` means a new context, as after `--mode auto` picks its mode)."""

    ledger: LG.LedgerStore
    provider: BatchProvider
    job_id: str
    root: Path  #: COLDBATCH_HOME: jobs/<id>/ and the result cache live under it
    opts: RunOptions
    emit: Events = silent
    prices: P.PriceTable = field(default_factory=P.load)
    sleep: Sleep = asyncio.sleep

    @property
    def folder(self) -> Path:
        return self.root / "jobs" / self.job_id

    def job(self) -> LG.JobRecord:
        """The job's ledger row as it is now (another process may have cancelled it since the last look)."""
        job = self.ledger.job(self.job_id)
        assert job is not None, f"job {self.job_id} vanished from the ledger"
        return job

    def status(self) -> LG.JobStatus:
        """The job's status as it is now (checked between steps: a cancel may have come from elsewhere)."""
        status = self.ledger.job_status(self.job_id)
        assert status is not None, f"job {self.job_id} vanished from the ledger"
        return status


@dataclass
class RunState:
    """What this process knows beyond the ledger; starts empty in every process (see the module docstring)."""

    fresh: set[int] = field(default_factory=set)  #: units whose intent this process wrote (nothing to reconcile)
    not_before: dict[int, float] = field(default_factory=dict)  #: requeued units wait until then (token quota)
    cancel_sent: set[int] = field(default_factory=set)  #: units whose batch this process asked to cancel
    counts: dict[int, int] = field(default_factory=dict)  #: requests finished per running unit, as last polled
    moving: bool = False  #: some batch's finished count grew in this pass
