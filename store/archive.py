"""What the archive of callback bodies takes on disk, from the catalog (no scan of the ledger)."""

from __future__ import annotations

import asyncpg

from store.connection import Connection


async def sizes(conn: Connection) -> asyncpg.Record:
    """``total``: flowscribe.callbacks with its TOAST and indexes; ``toast``: its out-of-line values (nearly all
    of the bodies: a body of more than ~2 KB compressed is kept there); ``rows``: the planner's estimate."""
    row = await conn.fetchrow(
        "SELECT pg_total_relation_size(c.oid) AS total,"
        " CASE WHEN c.reltoastrelid = 0 THEN 0 ELSE pg_total_relation_size(c.reltoastrelid) END AS toast,"
        " greatest(c.reltuples, 0)::bigint AS rows"
        " FROM pg_class c WHERE c.oid = 'flowscribe.callbacks'::regclass"
    )
    assert row is not None  # the table exists in a migrated database
    return row
