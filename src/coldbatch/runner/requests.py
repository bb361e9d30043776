"""The requests of a job's units: the one scan of request files that retry rounds, sync sends and deadline
rescue share (each had its own loop, parsing lines by hand).

Every request of a job originates in a round-1 unit (a prepared shard); later rounds' files are copies
of some of its lines, so "the job's requests" are the round-1 units' lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from coldbatch.jsonl import request_lines
from coldbatch.protocol.lines import RequestLine
from coldbatch.store.records import UnitRecord


class _Units(Protocol):
    def units(self, job_id: str) -> list[UnitRecord]: ...


def unit_requests(units: Iterable[UnitRecord]) -> Iterator[tuple[bytes, RequestLine]]:
    """(raw line, parsed request) of each request of each unit's file, in unit then line order. The raw line
    (without its newline) is for callers that copy it on (a retry file) instead of re-encoding it."""
    parse = RequestLine.parse
    for u in units:
        for _, raw in request_lines(Path(u.path)):
            yield raw, parse(raw)


def round_one(ledger: _Units, job_id: str) -> list[UnitRecord]:
    """The job's round-1 units, where every one of its requests originates."""
    return [u for u in ledger.units(job_id) if u.round == 1]


def job_requests(ledger: _Units, job_id: str) -> Iterator[tuple[bytes, RequestLine]]:
    """Every request of the job (repeated custom_ids included), in input order."""
    return unit_requests(round_one(ledger, job_id))
