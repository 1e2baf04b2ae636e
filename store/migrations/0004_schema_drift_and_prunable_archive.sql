-- Schema drift: fields and objects of callbacks that this version's payload Structs do not
-- know (msgspec ignores them; the archived body keeps them). Written by the workers from a
-- sample of the callbacks (FLOWSCRIBE_DRIFT_SAMPLE_RATE), outside the batch transactions;
-- read by `flowscribe-ingest drift`.
CREATE TABLE flowscribe.schema_drift (
    object               text NOT NULL,         -- the payload object holding it: Payload, JobStatus,
                                                 -- ConversationAnalysisModel, ConversationSentenceScoring, ...
    field                text NOT NULL,         -- the unknown field's name as sent (escaped if unprintable)
    kind                 text NOT NULL CHECK (kind IN ('field', 'object')),  -- object: it holds nested objects
    first_seen           timestamptz NOT NULL,  -- earliest receive time of a sampled callback carrying it
    last_seen            timestamptz NOT NULL,  -- latest such receive time
    callbacks            bigint NOT NULL,       -- sampled callbacks that carried it
    example_callback_id  uuid NOT NULL,         -- one of them (the latest): flowscribe.callbacks.id
    PRIMARY KEY (object, field)
);

-- A bounded archive: `flowscribe-ingest prune` sets the body of old callbacks to NULL and keeps
-- the rest of the ledger row; body_sha256 stays, so a vendor retry of a pruned body is still
-- recognised as a duplicate. A NULL body means "pruned": that callback can no longer be reprocessed.
ALTER TABLE flowscribe.callbacks ALTER COLUMN body DROP NOT NULL;
