-- The result cache, as it was before migrations: IF NOT EXISTS, so a cache made then is adopted as it is.
-- Append-only: never edit a migration once released.
CREATE TABLE IF NOT EXISTS entries (
    key               TEXT PRIMARY KEY,
    content           TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    checksum          TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_age ON entries (created_at)
