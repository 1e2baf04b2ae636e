"""The worker process: consume callback messages, land them in PostgreSQL, ack after commit."""
