-- What `flowscribe-ingest prune` reads: the callbacks whose body is still archived, oldest
-- first (its batches take them by key, (received_at, id)). Without it every run walked the
-- received_at index from the very first callback, visiting every body pruned in earlier runs
-- (a year of them for a nightly 90-day prune) before reaching one to prune, and `--dry-run`
-- counted over the whole table. Partial: a pruned row leaves it, so it stays the size of the
-- archive kept, and a worker's insert adds one small entry per callback.
-- Built in the migration's transaction, which holds off the workers' inserts for as long as
-- the build takes: on a large existing ledger, migrate at a quiet time.
CREATE INDEX IF NOT EXISTS callbacks_archived_idx ON flowscribe.callbacks (received_at, id)
    WHERE body IS NOT NULL;
