-- Every unit state change and job status change that won its compare-and-set, oldest first by rowid.
CREATE TABLE unit_events (
    unit_id     INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    detail      TEXT
);
CREATE INDEX unit_events_unit ON unit_events (unit_id);
CREATE TABLE job_events (
    job_id      TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id)
