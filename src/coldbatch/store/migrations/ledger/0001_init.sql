-- The job ledger, as it was before migrations: IF NOT EXISTS, so a ledger made then is adopted as it is.
-- Append-only: never edit a migration once released.
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    input_path  TEXT NOT NULL,
    output_path TEXT NOT NULL,
    options     TEXT NOT NULL,
    estimate    TEXT,
    report      TEXT,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         TEXT NOT NULL,
    round          INTEGER NOT NULL,
    shard          INTEGER NOT NULL,
    try            INTEGER NOT NULL DEFAULT 1,
    path           TEXT NOT NULL,
    requests       INTEGER NOT NULL,
    bytes          INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    model          TEXT NOT NULL,
    tokens         INTEGER NOT NULL DEFAULT 0,
    state          TEXT NOT NULL,
    intent_at      INTEGER,
    file_id        TEXT,
    batch_id       TEXT,
    batch_status   TEXT,
    output_file_id TEXT,
    error_file_id  TEXT,
    detail         TEXT,
    remote_cleaned INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS units_job ON units (job_id, state);
CREATE UNIQUE INDEX IF NOT EXISTS units_key ON units (job_id, round, shard);
-- Deduplicated jobs: which question (request key, the custom_id it was sent under) each row asked.
CREATE TABLE IF NOT EXISTS row_keys (
    job_id     TEXT NOT NULL,
    custom_id  TEXT NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (job_id, custom_id)
) WITHOUT ROWID;
-- Requests a deadline rescue sent through the synchronous API (custom_id as sent: a row id or a key).
CREATE TABLE IF NOT EXISTS rescued (
    job_id     TEXT NOT NULL,
    custom_id  TEXT NOT NULL,
    PRIMARY KEY (job_id, custom_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    job_id            TEXT NOT NULL,
    custom_id         TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    content           TEXT,
    error_code        TEXT,
    error_message     TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, custom_id)
) WITHOUT ROWID
