-- The dashboard reads the status events of one batch: without an index that scans every event.
CREATE INDEX batch_events_batch ON batch_events (batch_id)
