"""The reporting time zone of the analytics views (migration 0003): the zone of their "day".

It lives in the database (``flowscribe.reporting``), not in each process, because the
days are computed when the worker writes a summary and must not depend on which worker
wrote it. ``migrate`` applies ``FLOWSCRIBE_REPORTING_TIME_ZONE`` through
``flowscribe.set_reporting_time_zone``, which also moves every stored day to the new zone,
in one transaction that waits for (and holds off) the workers' writes.
"""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger(__name__)


class UnknownTimeZone(ValueError):
    """PostgreSQL does not know the zone name."""


async def reporting_time_zone(conn: asyncpg.Connection) -> str:
    zone: str = await conn.fetchval("SELECT time_zone FROM flowscribe.reporting")
    return zone


async def set_reporting_time_zone(conn: asyncpg.Connection, zone: str) -> bool:
    """Make ``zone`` the reporting time zone; True if it changed (every stored day was moved)."""
    try:
        async with conn.transaction():
            changed: bool = await conn.fetchval("SELECT flowscribe.set_reporting_time_zone($1)", zone)
    except asyncpg.InvalidParameterValueError as e:
        raise UnknownTimeZone(f"{e} ({e.hint})" if e.hint else str(e)) from None
    if changed:
        log.info("reporting time zone changed", extra={"time_zone": zone})
    return changed
