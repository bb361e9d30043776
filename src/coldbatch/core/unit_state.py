"""The client's two state machines: a unit (one submission of one request file) and a job.

Modelled on `core/status.py`: nothing else decides which state may follow which. The ledger turns
`unit_allowed_from(to)` / `job_allowed_from(to)` into a compare-and-set write with an event row, so a
step that races another (a `coldbatch cancel` from a second process, a resumed run) fails instead of
overwriting it.

A unit's remote steps are announced before they are taken: `uploading` and `creating` are committed,
with the time of the intent, BEFORE the call, so a crash leaves a unit that is reconciled against the
provider instead of sent twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class UnitState(StrEnum):
    PLANNED = "planned"  #: its request file is written; nothing sent
    UPLOADING = "uploading"  #: the upload may have reached the provider (intent_at says since when)
    UPLOADED = "uploaded"  #: the provider holds the file (file_id)
    CREATING = "creating"  #: the batch create may have reached the provider
    CREATED = "created"  #: the provider runs the batch (batch_id)
    COLLECTED = "collected"  #: its results are in the ledger (or it was sent row by row in sync mode)
    FAILED = "failed"  #: the batch failed for good, or the unit was cancelled before it was sent


U = UnitState
UNIT_TRANSITIONS: Final[Mapping[UnitState, frozenset[UnitState]]] = {
    U.PLANNED: frozenset({U.UPLOADING, U.COLLECTED, U.FAILED}),  # collected: sent in sync mode
    U.UPLOADING: frozenset({U.UPLOADED, U.FAILED}),
    U.UPLOADED: frozenset({U.CREATING, U.FAILED}),
    U.CREATING: frozenset({U.CREATED, U.FAILED}),
    U.CREATED: frozenset({U.COLLECTED, U.FAILED, U.UPLOADED}),  # uploaded: requeued (provider queue full)
    U.COLLECTED: frozenset(),
    U.FAILED: frozenset(),
}
OPEN_UNIT_STATES: Final = tuple(s for s in UnitState if UNIT_TRANSITIONS[s])


class JobStatus(StrEnum):
    PREPARING = "preparing"  #: shards and units are being planned
    PREPARED = "prepared"  #: planned and estimated; nothing sent
    RUNNING = "running"  #: units are being sent, polled and collected
    RESCUED = "rescued"  #: the deadline rescue sent what was late through the sync API
    CANCELLING = "cancelling"  #: a cancel was asked; what runs is cancelled, what finished is collected
    CANCELLED = "cancelled"  #: cancelled; OUTPUT holds what finished
    DONE = "done"  #: OUTPUT is written
    FAILED = "failed"  #: preparation failed; nothing was sent


J = JobStatus
#: a resumed run re-enters `running` (and a finished job may be run again: it only re-writes OUTPUT)
JOB_TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    J.PREPARING: frozenset({J.PREPARED, J.FAILED, J.CANCELLING}),
    J.PREPARED: frozenset({J.RUNNING, J.DONE, J.FAILED, J.CANCELLING, J.CANCELLED}),
    J.RUNNING: frozenset({J.RUNNING, J.RESCUED, J.DONE, J.FAILED, J.CANCELLING, J.CANCELLED}),
    J.RESCUED: frozenset({J.RESCUED, J.DONE, J.CANCELLING, J.CANCELLED}),
    J.CANCELLING: frozenset({J.CANCELLING, J.CANCELLED}),
    J.CANCELLED: frozenset({J.CANCELLED}),
    J.DONE: frozenset({J.DONE, J.RUNNING}),
    J.FAILED: frozenset(),
}


def unit_allowed_from(to: UnitState) -> frozenset[UnitState]:
    """The unit states from which `to` may be entered."""
    return frozenset(s for s, nxt in UNIT_TRANSITIONS.items() if to in nxt)


def job_allowed_from(to: JobStatus) -> frozenset[JobStatus]:
    """The job statuses from which `to` may be entered."""
    return frozenset(s for s, nxt in JOB_TRANSITIONS.items() if to in nxt)
