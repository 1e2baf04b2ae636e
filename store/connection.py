"""What the store's functions run their statements on, and the one place connections are opened.

Every process (worker, console, ops commands, migrate) opens its PostgreSQL
connections here, so each has the same codecs: ``timestamptz`` read and written
as the exact instant (store.timestamps), whatever a callback carried.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from store.timestamps import exact_timestamps

# A connection of its own (ops, tests) or one lent by the worker's pool: the same statements run on both.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


async def connect(dsn: str, **options: Any) -> asyncpg.Connection:
    """One connection (``asyncpg.connect``'s options), our codecs installed; the caller closes it."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, **options)
    try:
        await exact_timestamps(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


def create_pool(dsn: str, **options: Any) -> asyncpg.Pool:
    """A pool (``asyncpg.create_pool``'s options, used as ``async with``) whose connections have our codecs."""
    pool: asyncpg.Pool = asyncpg.create_pool(dsn, init=exact_timestamps, **options)
    return pool
