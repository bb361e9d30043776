"""One way to open a coldbatch SQLite file and bring its schema up to date, for every SQLite store.

The server store, the job ledger and the result cache each keep their schema as numbered `.sql` files
in a package (`coldbatch.store.migrations`, `….migrations.ledger`, `….migrations.cache`), applied in
name order, each with its row in `schema_migrations` in the same transaction: a migration is applied
once, all or nothing. Append-only: a released migration is never edited.

Files made before the ledger and the cache had migrations hold their tables already: their first
migration uses `CREATE … IF NOT EXISTS`, and an `ALTER TABLE … ADD COLUMN` whose column exists is
skipped (SQLite has no `ADD COLUMN IF NOT EXISTS`), so such a file opens and is adopted as it is.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from pathlib import Path

_ADD_COLUMN = re.compile(r"^\s*ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(\w+)", re.IGNORECASE)


def connect(path: Path, *, row_factory: bool = True, autocheckpoint: int | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit `BEGIN IMMEDIATE`), WAL with
    synchronous=NORMAL: a killed process loses nothing committed; only an OS crash can lose the last
    transactions. A 30 s busy timeout lets processes sharing the file wait for each other's writes."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    if row_factory:
        conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    if autocheckpoint is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
    return conn


def migration_names(package: str) -> list[str]:
    """The migrations of `package`, in the order they apply."""
    folder = resources.files(package)
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))


def migrate(db: sqlite3.Connection, package: str) -> list[str]:
    """Apply the pending migrations of `package`, each with its bookkeeping row in one transaction;
    returns the names applied. A migration that fails leaves neither half its change nor its row."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER)")
    done = {r[0] for r in db.execute("SELECT name FROM schema_migrations")}
    folder = resources.files(package)
    applied = []
    for name in migration_names(package):
        if name in done:
            continue
        sql = _strip_comments(folder.joinpath(name).read_text())  # a comment may hold a ';'
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip() and not _column_exists(db, statement):
                    db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, strftime('%s','now'))", (name,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def _column_exists(db: sqlite3.Connection, statement: str) -> bool:
    """True for an `ALTER TABLE t ADD COLUMN c` whose column is there already (a pre-migration file)."""
    m = _ADD_COLUMN.match(statement)
    if m is None:
        return False
    return m.group(2) in {r[1] for r in db.execute(f"PRAGMA table_info({m.group(1)})")}


def _strip_comments(statement: str) -> str:
    return "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--"))
