-- coldbatch server schema for PostgreSQL, version 1 (the SQLite schema of 0001-0003, plus the work queue).
-- Append-only: never edit a migration once released.
CREATE TABLE files (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    owner       TEXT NOT NULL,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    status      TEXT NOT NULL DEFAULT 'processed',
    deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX files_owner ON files (owner, seq);

CREATE TABLE batches (
    seq                BIGSERIAL PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    owner              TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    model              TEXT,
    input_file_id      TEXT NOT NULL,
    completion_window  TEXT NOT NULL,
    status             TEXT NOT NULL,
    output_file_id     TEXT,
    error_file_id      TEXT,
    created_at         BIGINT NOT NULL,
    in_progress_at     BIGINT,
    expires_at         BIGINT NOT NULL,
    finalizing_at      BIGINT,
    completed_at       BIGINT,
    failed_at          BIGINT,
    expired_at         BIGINT,
    cancelling_at      BIGINT,
    cancelled_at       BIGINT,
    total              BIGINT NOT NULL DEFAULT 0,
    completed          BIGINT NOT NULL DEFAULT 0,
    failed             BIGINT NOT NULL DEFAULT 0,
    input_tokens       BIGINT NOT NULL DEFAULT 0,
    cached_tokens      BIGINT NOT NULL DEFAULT 0,
    output_tokens      BIGINT NOT NULL DEFAULT 0,
    errors             TEXT,
    metadata           TEXT,
    output_ttl         BIGINT,
    enqueued_tokens    BIGINT NOT NULL DEFAULT 0,
    -- which serve process coordinates the batch (validates, finalizes), until when (database clock, epoch s)
    lease_owner        TEXT,
    lease_until        DOUBLE PRECISION
);
CREATE INDEX batches_owner ON batches (owner, seq);
CREATE INDEX batches_status ON batches (status);

CREATE TABLE batch_events (
    seq         BIGSERIAL PRIMARY KEY,
    batch_id    TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    detail      TEXT
);
CREATE INDEX batch_events_batch ON batch_events (batch_id, seq);

-- One row per finished request, keyed by input line: the primary key is what makes a result line
-- written once per (batch, line) whichever worker, lease or retry produced it.
CREATE TABLE results (
    batch_id   TEXT NOT NULL,
    line       INTEGER NOT NULL,
    custom_id  TEXT NOT NULL,
    ok         BOOLEAN NOT NULL,
    data       BYTEA NOT NULL,
    PRIMARY KEY (batch_id, line)
);

-- The work queue: a batch's input lines in ranges, each claimed by one worker at a time under a lease.
CREATE TABLE chunks (
    batch_id    TEXT NOT NULL,
    chunk       INTEGER NOT NULL,
    first_line  INTEGER NOT NULL,
    last_line   INTEGER NOT NULL,
    start_byte  BIGINT NOT NULL,
    end_byte    BIGINT NOT NULL,
    requests    INTEGER NOT NULL,
    done        BOOLEAN NOT NULL DEFAULT FALSE,
    worker      TEXT,
    lease_until DOUBLE PRECISION,
    attempts    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, chunk)
);
CREATE INDEX chunks_open ON chunks (batch_id, chunk) WHERE NOT done
