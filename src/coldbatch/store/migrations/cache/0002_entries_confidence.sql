-- A label answer's probability, skipped on a cache that has the column already.
ALTER TABLE entries ADD COLUMN confidence REAL
