"""The job ledger, as the runner names it: the SQLite implementation lives in `store/ledger.py`, behind
`store.interfaces.LedgerStore`; the unit states and their transition table in `core/unit_state.py`.

A *unit* is one submission of one request file. It moves `planned → uploading → uploaded → creating →
created → collected` (or `failed`); see `core.unit_state` for the whole table and why the intent states
are committed before their remote call.
"""

from __future__ import annotations

from coldbatch.core.unit_state import OPEN_UNIT_STATES, JobStatus, UnitState
from coldbatch.store.interfaces import LedgerStore
from coldbatch.store.ledger import Ledger
from coldbatch.store.records import JobRecord, Outcome, UnitRecord

__all__ = [
    "COLLECTED",
    "CREATED",
    "CREATING",
    "FAILED",
    "OPEN_STATES",
    "PLANNED",
    "UPLOADED",
    "UPLOADING",
    "JobRecord",
    "JobStatus",
    "Ledger",
    "LedgerStore",
    "Outcome",
    "UnitRecord",
    "UnitState",
]

#: unit states, in order; `failed` (the batch failed for good) and `collected` are final
PLANNED, UPLOADING, UPLOADED, CREATING, CREATED, COLLECTED, FAILED = (
    UnitState.PLANNED,
    UnitState.UPLOADING,
    UnitState.UPLOADED,
    UnitState.CREATING,
    UnitState.CREATED,
    UnitState.COLLECTED,
    UnitState.FAILED,
)
OPEN_STATES = OPEN_UNIT_STATES
