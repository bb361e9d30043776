-- The results log keyed by (batch, input line) instead of (batch, custom_id): a batch's lines finish
-- in input order, so inserts append to the B-tree instead of landing on random pages (custom_ids of a
-- deduplicated job are hashes). A validated file has one custom_id per line, so the key is as unique.
CREATE TABLE results_by_line (
    batch_id   TEXT NOT NULL,
    custom_id  TEXT NOT NULL,
    line       INTEGER NOT NULL,
    ok         INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
INSERT OR IGNORE INTO results_by_line SELECT batch_id, custom_id, line, ok, data FROM results;
DROP TABLE results;
ALTER TABLE results_by_line RENAME TO results
