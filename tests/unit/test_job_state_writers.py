"""Every write of a job's status goes through the one state machine (core/unit_state.py: JobStatus and its
transition table), whose compare-and-set write with an event row is the ledger's `set_job` / `move_job`
(tests/store/test_ledger_store.py tests the table and the events). This test holds the writers to it: each
status a module names in a `set_job(..., status=...)` call is a JobStatus (a typo would otherwise pass until
that line runs, raising mid-job), and no module outside store/ writes the jobs table itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import coldbatch
from coldbatch.core.unit_state import JobStatus

PACKAGE = Path(coldbatch.__file__).parent
FILES = sorted(PACKAGE.rglob("*.py"))


def named_statuses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, status) for each `<x>.set_job(..., status="literal")` or `status=JobStatus.NAME` call."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "set_job"):
            continue
        for kw in node.keywords:
            if kw.arg != "status":
                continue
            if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                found.append((node.lineno, kw.value.value))
            elif isinstance(kw.value, ast.Attribute) and getattr(kw.value.value, "id", None) == "JobStatus":
                member = JobStatus.__members__.get(kw.value.attr)
                found.append((node.lineno, member.value if member else f"JobStatus.{kw.value.attr}"))
    return found


def bad_statuses(tree: ast.AST) -> list[str]:
    known = {s.value for s in JobStatus}
    return [f"line {n}: status {s!r}" for n, s in named_statuses(tree) if s not in known]


def writes_jobs_table(text: str) -> bool:
    """SQL that changes the jobs table (the ledger's own, in store/, is the compare-and-set one)."""
    flat = " ".join(text.upper().split())
    return any(
        w in flat for w in ("UPDATE JOBS ", "INSERT INTO JOBS ", "INSERT OR REPLACE INTO JOBS ", "DELETE FROM JOBS ")
    )


def test_there_are_writers_to_check() -> None:
    statuses = {s for p in FILES for _, s in named_statuses(ast.parse(p.read_text(encoding="utf-8")))}
    assert {"prepared", "running", "failed", "cancelling"} <= statuses


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(PACKAGE).as_posix() for p in FILES])
def test_each_status_a_writer_names_is_a_job_status(path: Path) -> None:
    assert bad_statuses(ast.parse(path.read_text(encoding="utf-8"))) == []


def test_only_the_ledger_store_writes_the_jobs_table() -> None:
    outside = [
        p.relative_to(PACKAGE).as_posix()
        for p in FILES
        if p.relative_to(PACKAGE).parts[0] != "store" and writes_jobs_table(p.read_text(encoding="utf-8"))
    ]
    assert outside == []


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ('ledger.set_job("j", status="finished")', True),
        ('ctx.ledger.set_job(job_id, status="Done", report={})', True),
        ("lg.set_job(j, status=JobStatus.DONE)", False),
        ("lg.set_job(j, status=JobStatus.FINISHED)", True),
        ('lg.set_job(j, status="cancelling")', False),
        ('lg.set_job(j, options={"status": "x"})', False),
        ("lg.set_job(j, status=final)", False),  # a variable: the ledger converts it through JobStatus
    ],
)
def test_the_checker_catches_a_status_the_machine_does_not_have(source: str, bad: bool) -> None:
    assert bool(bad_statuses(ast.parse(source))) is bad


@pytest.mark.parametrize(
    ("sql", "writes"),
    [
        ("UPDATE jobs SET status = 'done' WHERE id = ?", True),
        ("update  jobs\n set report = ?", True),
        ("INSERT INTO jobs VALUES (?)", True),
        ("SELECT * FROM jobs WHERE id = ?", False),
        ("UPDATE jobs_ui_prefs SET x = 1", False),
    ],
)
def test_the_sql_check_tells_writes_from_reads(sql: str, writes: bool) -> None:
    assert writes_jobs_table(f'db.execute("{sql}")') is writes
