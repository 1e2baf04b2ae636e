"""flowscribe-ingest: Flowscribe callbacks to PostgreSQL, exactly once."""
