-- A label answer's probability (runner/confidence.py): skipped on a ledger that has the column already.
ALTER TABLE results ADD COLUMN confidence REAL
