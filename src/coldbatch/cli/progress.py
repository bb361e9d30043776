"""The progress display of `coldbatch run | resume | cancel`: requests done of the total, rate and ETA.

Why: the old line showed `units planned:1` for a whole sync job and `rows ok 0` in batch mode until a
batch was collected while the provider's counts moved (34 -> 69 -> 100), and on a terminal the final
summary was printed onto the progress line (issue 16). Now:

- done = answers recorded in the ledger (sync mode: as they arrive) + what running batches have finished
  by the provider's `request_counts` (`Runner.progress()["remote_done"]`), out of the requests to send;
- the rate is measured from this display's own start (a resumed job's earlier answers do not inflate it),
  and the ETA is what is left at that rate;
- on a terminal, rich draws a live bar on stderr and prints events above it; `close()` ends the live
  display, so what follows (the summary, on stdout) starts on a clean line. Elsewhere (a log, a pipe) one
  plain line is printed per change.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

EVENTS = ("created", "collected", "failed", "retry_round", "requeued", "cancelling", "rescue", "rescued")


def counts(d: dict[str, Any]) -> tuple[int, int, int, int]:
    """(done, total, ok, failed) from a runner's progress event."""
    ok, failed = int(d.get("succeeded", 0)), int(d.get("failed", 0))
    done = ok + failed + int(d.get("remote_done", 0))
    total = max(int(d.get("requests", 0)), done)
    return done, total, ok, failed


def rate_and_eta(done: int, total: int, first: int, seconds: float) -> tuple[float | None, float | None]:
    """Requests a second since the display started, and seconds left at that rate (None: not known yet)."""
    if seconds <= 0 or done <= first:
        return None, None
    rate = (done - first) / seconds
    return rate, (total - done) / rate


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressDisplay:
    """A runner's `on_event`; call `close()` before printing anything else."""

    def __init__(self, console: Console | None = None) -> None:
        self.console: Console | None = console
        if console is not None or not _plain(sys.stderr):
            from rich.console import Console

            self.console = console or Console(file=sys.stderr)
        self.live = self.console is not None and self.console.is_terminal
        self.started = time.monotonic()
        self.first: int | None = None
        self.last = ""
        self._bar: Progress | None = None
        self._task: Any = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            self._progress(data)
        elif kind in EVENTS:
            detail = ", ".join(f"{k}={v}" for k, v in data.items() if k != "errors")
            self._print(f"[{clock(time.monotonic() - self.started)}] {kind}: {detail}")

    def line(self, d: dict[str, Any]) -> str:
        """The plain progress line: requests done of total, ok/failed, rate, ETA."""
        done, total, ok, failed = counts(d)
        if self.first is None:
            self.first = done
        rate, eta = rate_and_eta(done, total, self.first, time.monotonic() - self.started)
        shown = f"{rate:,.1f}/s" if rate is not None else "-/s"
        return (
            f"[{clock(time.monotonic() - self.started)}] requests {done:,}/{total:,} done (ok {ok:,}, failed "
            f"{failed:,}, {int(d.get('remote_done', 0)):,} finished in running batches) {shown} ETA {clock(eta)}"
        )

    def _progress(self, d: dict[str, Any]) -> None:
        text = self.line(d)
        if not self.live:
            if text.split("] ", 1)[1] != self.last.split("] ", 1)[-1]:
                click.echo(text, err=True)
            self.last = text
            return
        done, total, ok, failed = counts(d)
        rate, eta = rate_and_eta(done, total, self.first or 0, time.monotonic() - self.started)
        fields = {"ok": ok, "failed": failed, "rate": f"{rate:,.1f}/s" if rate else "-/s", "eta": clock(eta)}
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("requests"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ok {task.fields[ok]} failed {task.fields[failed]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("requests", total=total, completed=done, **fields)
        self._bar.update(self._task, total=total, completed=done, **fields)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        elif self.live and self.console is not None:
            self.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        """End the live display (its last state stays on screen, on its own line)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.first, self.started, self.last = None, time.monotonic(), ""  # a next job (--examples) starts afresh


def _plain(stream: TextIO) -> bool:
    """True where rich's Console would not be a terminal either (a log, a pipe, a test's capture): no tty and
    neither TTY_COMPATIBLE nor FORCE_COLOR set. There the plain lines need no rich (~0.1 s and 7 MB)."""
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:  # a closed stream, as rich treats it
        tty = False
    return not tty and "TTY_COMPATIBLE" not in os.environ and "FORCE_COLOR" not in os.environ
