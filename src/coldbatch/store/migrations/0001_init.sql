-- coldbatch server schema, version 1. Append-only: never edit a migration once released.
CREATE TABLE files (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    owner       TEXT NOT NULL,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    status      TEXT NOT NULL DEFAULT 'processed',
    deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX files_owner ON files (owner, seq);

CREATE TABLE batches (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT NOT NULL UNIQUE,
    owner              TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    model              TEXT,
    input_file_id      TEXT NOT NULL,
    completion_window  TEXT NOT NULL,
    status             TEXT NOT NULL,
    output_file_id     TEXT,
    error_file_id      TEXT,
    created_at         INTEGER NOT NULL,
    in_progress_at     INTEGER,
    expires_at         INTEGER NOT NULL,
    finalizing_at      INTEGER,
    completed_at       INTEGER,
    failed_at          INTEGER,
    expired_at         INTEGER,
    cancelling_at      INTEGER,
    cancelled_at       INTEGER,
    total              INTEGER NOT NULL DEFAULT 0,
    completed          INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    input_tokens       INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens      INTEGER NOT NULL DEFAULT 0,
    errors             TEXT,
    metadata           TEXT,
    output_ttl         INTEGER,
    enqueued_tokens    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX batches_owner ON batches (owner, seq);
CREATE INDEX batches_status ON batches (status);

CREATE TABLE batch_events (
    batch_id    TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    detail      TEXT
);

-- One row per finished request: the executor's durable log (exactly one per custom_id).
CREATE TABLE results (
    batch_id   TEXT NOT NULL,
    custom_id  TEXT NOT NULL,
    line       INTEGER NOT NULL,
    ok         INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
) WITHOUT ROWID;
