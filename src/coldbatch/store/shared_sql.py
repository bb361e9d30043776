"""SQL that the SQLite and PostgreSQL server stores share, written once with the placeholder as a parameter.

The two backends keep their own connections, transactions and dialect (`IN (?, ?)` against `= ANY(%s)`,
casts, upserts), but the rules they must agree on are spelled here, so one cannot drift from the other:
keyset pagination of files and batches (an `after` id that is not the owner's gives an empty page), the
owner/status filter of dashboard pages, the columns of a file row, how a batch's counts and token usage
move when results are logged, and how JSON fields are stored. `mark` is the backend's positional
placeholder ("?" or "%s"); `named` its named one as a format string (":{}" or "%({})s").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from coldbatch.core.status import TERMINAL as _TERMINAL_STATUSES
from coldbatch.store.records import ResultRow, Row

#: the terminal statuses' values, in one order (a batch in one of them never changes again)
TERMINAL = tuple(sorted(s.value for s in _TERMINAL_STATUSES))

#: a file row's columns as the stores write them (`status` is always 'processed')
FILE_COLUMNS = ("id", "owner", "filename", "purpose", "bytes", "created_at", "expires_at")


def insert_file(named: str, verb: str = "INSERT") -> str:
    """The statement that writes one file row from a dict with `FILE_COLUMNS` (`verb`: SQLite's
    `INSERT OR REPLACE` where a rebuilt result file replaces its row)."""
    values = ", ".join(named.format(c) for c in FILE_COLUMNS)
    return f"{verb} INTO files ({', '.join(FILE_COLUMNS)}, status) VALUES ({values}, 'processed')"


def insert_row(table: str, cols: Sequence[str], named: str) -> str:
    """`INSERT INTO table (cols) VALUES (…)` with a named placeholder per column."""
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(named.format(c) for c in cols)})"


def files_page(
    mark: str, owner: str, *, purpose: str | None, after: str | None, limit: int, order: str
) -> tuple[str, list[Any]]:
    """One page of an owner's live files in `seq` order, one row more than `limit` (it says whether there
    are more: `split_page`)."""
    desc = order == "desc"
    sql = f"SELECT * FROM files WHERE owner = {mark} AND deleted = 0"
    args: list[Any] = [owner]
    if purpose:
        sql += f" AND purpose = {mark}"
        args.append(purpose)
    if after:
        sql += f" AND seq {'<' if desc else '>'} COALESCE((SELECT seq FROM files WHERE id = {mark}), {mark})"
        args += [after, -1 if desc else 1 << 62]
    sql += f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT {mark}"
    args.append(limit + 1)
    return sql, args


def batches_page(mark: str, owner: str, *, after: str | None, limit: int) -> tuple[str, list[Any]]:
    """One page of an owner's batches, newest first, one row more than `limit` (see `split_page`)."""
    sql = f"SELECT * FROM batches WHERE owner = {mark}"
    args: list[Any] = [owner]
    if after:
        sql += f" AND seq < COALESCE((SELECT seq FROM batches WHERE id = {mark} AND owner = {mark}), -1)"
        args += [after, owner]
    sql += f" ORDER BY seq DESC LIMIT {mark}"
    args.append(limit + 1)
    return sql, args


def split_page(rows: list[Row], limit: int) -> tuple[list[Row], bool]:
    """(the page, whether there is more) from the `limit` + 1 rows a page query returned."""
    return rows[:limit], len(rows) > limit


def owner_filter(mark: str, owner: str | None, status: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause for dashboard pages: one owner's rows (None: every owner's), of one status or all."""
    clauses, args = [], []
    if owner is not None:
        clauses.append(f"owner = {mark}")
        args.append(owner)
    if status is not None:
        clauses.append(f"status = {mark}")
        args.append(status)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def advance_counts(mark: str, batch_id: str, fresh: Sequence[ResultRow]) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE that adds newly logged results (and only those) to the batch's request counts and token
    usage, run in the transaction that logs them."""
    ok_n = sum(1 for r in fresh if r[2])
    sql = (
        f"UPDATE batches SET completed = completed + {mark}, failed = failed + {mark},"
        f" input_tokens = input_tokens + {mark}, cached_tokens = cached_tokens + {mark},"
        f" output_tokens = output_tokens + {mark} WHERE id = {mark}"
    )
    tokens = (sum(r[4] for r in fresh), sum(r[5] for r in fresh), sum(r[6] for r in fresh))
    return sql, (ok_n, len(fresh) - ok_n, *tokens, batch_id)


def db_value(v: Any) -> Any:
    """A field as stored: dicts and lists (metadata, errors) as compact JSON text, anything else as it is."""
    return orjson.dumps(v).decode() if isinstance(v, dict | list) else v
