-- Compress the large values with lz4 instead of PostgreSQL's default pglz.
-- The archived body (every callback's exact bytes, 250 KB typical) is TOASTed on
-- every insert; pglz compresses at a few tens of MB/s and was half of the time of
-- a COPY batch of typical callbacks. lz4 compresses as small on these bodies at
-- several times the speed (bench/: raw COPY of typical callbacks ~95k -> ~185k rows/s).
-- Only values written from now on use lz4; existing ones stay readable as they are.
-- Servers built without lz4 (it is optional before PostgreSQL 16) keep pglz.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE flowscribe.callbacks ALTER COLUMN body SET COMPRESSION lz4;
        ALTER TABLE flowscribe.analyses ALTER COLUMN conversation_text SET COMPRESSION lz4;
    ELSE
        RAISE NOTICE 'lz4 is not available on this server; large values stay compressed with pglz';
    END IF;
END
$$;
