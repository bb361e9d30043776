"""A finished job's exit status: one rule for `coldbatch run | resume | cancel`'s exit code and for
`coldbatch.JobReport.exit_status`, so a script and a Python caller judge a job the same way.

Why here and not in the CLI: the job API (coldbatch/job.py) reports the status too, and the library may not
import the CLI (tests/unit/test_layering.py). The codes an input or usage error gets (1, 2) and the provider
failure's (3) are the CLI's, from the exception it catches; this module judges only a finished job's rows
(cli/exitcodes.py lists them all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

ALL_ANSWERED: Final = 0
SOME_UNANSWERED: Final = 4
NONE_ANSWERED: Final = 5


def unanswered(report: Mapping[str, Any]) -> int:
    """Rows with no answer: failed, rejected before sending, or never run (a cancelled job)."""
    return int(report["rows"]) - int(report["succeeded"])


def exit_code(report: Mapping[str, Any] | None, threshold: tuple[float, bool] = (0, False)) -> int:
    """The code for a finished job's report (None: another process drives the job; nothing to judge).
    `threshold` is `--fail-on-errors`: (count, False) or (percent, True) unanswered rows that still pass."""
    if report is None:
        return ALL_ANSWERED
    rows, missing = int(report["rows"]), unanswered(report)
    if rows and missing == rows:
        return NONE_ANSWERED
    limit, share = threshold
    allowed = rows * limit / 100 if share else limit
    return SOME_UNANSWERED if missing > allowed else ALL_ANSWERED
