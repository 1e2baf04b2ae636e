-- What the console's ledger searches need to stay fast on millions of callbacks
-- (console/ledger.py; measured by `python -m bench.console`). Every search pages
-- newest first on (received_at, id), so each index ends with those columns and a
-- page is a short backward index scan, whatever the filter:
--   no filter or a time window    -> (received_at, id)
--   an outcome (job_failed is rare) -> (outcome, received_at, id)
--   a content type                -> (content_type, received_at, id)
--   a job                         -> (job_id); an analysis uses callbacks_analysis_id_idx.
-- (received_at, id) replaces (received_at): same use, plus keyset order (reprocess pages on it too).
CREATE INDEX IF NOT EXISTS callbacks_received_at_id_idx ON flowscribe.callbacks (received_at, id);
DROP INDEX IF EXISTS flowscribe.callbacks_received_at_idx;
CREATE INDEX IF NOT EXISTS callbacks_outcome_received_at_idx ON flowscribe.callbacks (outcome, received_at, id);
CREATE INDEX IF NOT EXISTS callbacks_content_type_received_at_idx
    ON flowscribe.callbacks (content_type, received_at, id);
CREATE INDEX IF NOT EXISTS callbacks_job_id_idx ON flowscribe.callbacks (job_id);
