-- The trace each callback's story is in (OpenTelemetry: W3C trace id, 32 hex digits), so that the
-- console can link a callback to it in the trace UI. Written by the worker when the message carried
-- a sampled `traceparent`; NULL otherwise, for every callback stored before, and for those stored
-- by workers of the version before this one while a rolling upgrade runs (they do not name the
-- column). Adding a nullable column without a default rewrites nothing: instant on any ledger.
ALTER TABLE flowscribe.callbacks ADD COLUMN IF NOT EXISTS trace_id text;
