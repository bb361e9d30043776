"""The batch state machine, exactly as the Batch API exposes it (spec §4).

Nothing else in coldbatch decides which status may follow which: the server's store turns
`allowed_from(to)` into a compare-and-set UPDATE, so a transition that races another one fails
instead of overwriting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class BatchStatus(StrEnum):
    VALIDATING = "validating"  #: the input file is being checked
    FAILED = "failed"  #: the input file broke a rule; `errors` says which lines
    IN_PROGRESS = "in_progress"  #: requests are being executed
    FINALIZING = "finalizing"  #: every request is done; output and error files are being written
    COMPLETED = "completed"  #: results are ready
    EXPIRED = "expired"  #: the completion window passed; finished results were kept
    CANCELLING = "cancelling"  #: cancel was asked; in-flight requests are finishing
    CANCELLED = "cancelled"  #: cancelled; finished results were kept


S = BatchStatus
TRANSITIONS: Final[Mapping[BatchStatus, frozenset[BatchStatus]]] = {
    S.VALIDATING: frozenset({S.IN_PROGRESS, S.FAILED, S.CANCELLING}),
    S.IN_PROGRESS: frozenset({S.FINALIZING, S.CANCELLING, S.EXPIRED, S.FAILED}),  # failed: no disk for results
    S.FINALIZING: frozenset({S.COMPLETED, S.EXPIRED}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    S.FAILED: frozenset(),
    S.COMPLETED: frozenset(),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
}
TERMINAL: Final = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: the `*_at` field each status sets when it is entered
TIMESTAMP_FIELD: Final[Mapping[BatchStatus, str]] = {
    S.IN_PROGRESS: "in_progress_at",
    S.FINALIZING: "finalizing_at",
    S.COMPLETED: "completed_at",
    S.FAILED: "failed_at",
    S.EXPIRED: "expired_at",
    S.CANCELLING: "cancelling_at",
    S.CANCELLED: "cancelled_at",
}


def allowed_from(to: BatchStatus) -> frozenset[BatchStatus]:
    """The statuses from which `to` may be entered."""
    return frozenset(s for s, nxt in TRANSITIONS.items() if to in nxt)


def can_transition(frm: BatchStatus, to: BatchStatus) -> bool:
    return to in TRANSITIONS[frm]
