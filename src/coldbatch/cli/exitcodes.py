"""The exit codes of `coldbatch run | resume | cancel`, so scripts and CI can tell what happened.

Why: a job whose every row failed (a model the target does not serve, embeddings on an engine without
them) used to exit 0, like a job whose every row was answered (issue 16).

    0  every row was answered
    1  an input was refused (file, row and field named); nothing was sent
    2  a usage error, or the target cannot serve the job (model, endpoint); nothing was sent
    3  the provider failed mid-job; `coldbatch resume JOB` continues it
    4  the job finished and OUTPUT was written, but some rows have no answer (see OUTPUT's `error` column)
    5  the job finished and OUTPUT was written, but no row has an answer

`--fail-on-errors N` or `N%` lets a few unanswered rows pass: 4 only when more rows than that are
unanswered (5 still when none is answered). The rule for 0/4/5 is `core/exit_status.py`, shared with
`coldbatch.JobReport.exit_status`; this module adds the flag's type, the help text and the explanation line.
"""

from __future__ import annotations

from typing import Any

import click

from coldbatch.core.exit_status import ALL_ANSWERED, NONE_ANSWERED, SOME_UNANSWERED, exit_code, unanswered

__all__ = [
    "ALL_ANSWERED",
    "HELP",
    "NONE_ANSWERED",
    "SOME_UNANSWERED",
    "Threshold",
    "exit_code",
    "explain",
    "unanswered",
]

HELP = (
    "Exit codes: 0 every row answered; 1 input refused; 2 usage error or the target cannot serve the job "
    "(nothing sent); 3 provider failure (resume continues); 4 finished with unanswered rows (OUTPUT's "
    "`error` column says why); 5 finished with no row answered."
)


class Threshold(click.ParamType):
    """`--fail-on-errors`: a count of rows (`10`) or a share of them (`1%`, `0.5%`)."""

    name = "N|N%"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, bool]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        share = text.endswith("%")
        try:
            number = float(text[:-1] if share else text)
        except ValueError:
            self.fail(f"{value!r} is not a count of rows (10) or a percentage (1%)", param, ctx)
        if number < 0 or (share and number > 100) or (not share and number != int(number)):
            self.fail(f"{value!r}: give a whole number of rows >= 0, or a percentage from 0% to 100%", param, ctx)
        return number, share


def explain(report: dict[str, Any] | None, code: int) -> str | None:
    """One line saying why the exit code is not 0."""
    if report is None or code == ALL_ANSWERED:
        return None
    missing = unanswered(report)
    head = "no row was answered" if code == NONE_ANSWERED else f"{missing:,} of {report['rows']:,} row(s) unanswered"
    return (
        f"exit {code}: {head}; OUTPUT's `error` column says why for each row "
        f"(`coldbatch status {report['job']}` sums them up)"
    )
