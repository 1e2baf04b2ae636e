"""The analytics views (migration 0003, schema ``flowscribe_analytics``): what their figures
are, and the reporting time zone, whose calendar days are their "day".

It lives in the database (``flowscribe.reporting``), not in each process, because the
days are computed when the worker writes a summary and must not depend on which worker
wrote it. ``migrate`` applies ``FLOWSCRIBE_REPORTING_TIME_ZONE`` through
``flowscribe.set_reporting_time_zone``, which also moves every stored day to the new zone,
in one transaction that waits for (and holds off) the workers' writes.
"""

from __future__ import annotations

import logging

import asyncpg

from store.batch import lock, lock_key, write_summaries
from store.connection import Connection

log = logging.getLogger(__name__)

# The scoring fields whose per-conversation mean the summaries and the views carry, as
# columns named in snake_case (``Score_Performance`` -> ``score_performance``).
SUMMARY_FIGURES = (
    "Score_Performance", "Score_Empathy", "Score_Quality", "Score_Ownership", "Score_Compliments",
    "Score_Summary", "CustomerSatisfactionPercentage", "SilencePercentage", "ProblemResolutionPercentage",
    "CustomerEffortPercentage", "CustomerAverageRating", "WaitingTime", "CrossTalking", "Joy", "Negativity",
    "Anger", "Shouting", "Disgust", "Fear", "Sadness", "Relevance", "SentimentScore",
)


class UnknownTimeZone(ValueError):
    """PostgreSQL does not know the zone name."""


async def set_reporting_time_zone(conn: Connection, zone: str) -> bool:
    """Make ``zone`` the reporting time zone; True if it changed (every stored day was moved)."""
    try:
        async with conn.transaction():
            changed: bool = await conn.fetchval("SELECT flowscribe.set_reporting_time_zone($1)", zone)
    except asyncpg.InvalidParameterValueError as e:
        raise UnknownTimeZone(f"{e} ({e.hint})" if e.hint else str(e)) from None
    if changed:
        log.info("reporting time zone changed", extra={"time_zone": zone})
    return changed


# Stored analyses without a summary, and summaries of analyses no longer stored.
_OUT_OF_STEP = """
    SELECT a.id FROM flowscribe.analyses AS a
    WHERE NOT EXISTS (SELECT 1 FROM flowscribe.conversation_summaries AS s WHERE s.analysis_id = a.id)
    UNION ALL
    SELECT s.analysis_id FROM flowscribe.conversation_summaries AS s
    WHERE NOT EXISTS (SELECT 1 FROM flowscribe.analyses AS a WHERE a.id = s.analysis_id)
"""


async def summarise_missing(conn: Connection, chunk: int = 500) -> int:
    """Bring the summaries in step with the stored analyses; the number of analyses put right.

    Workers write an analysis's summary with its rows, but a worker of a version from before
    migration 0003 does not: during a rolling upgrade, analyses stored by old workers after
    the migration have none. ``migrate`` runs this every time (with nothing out of step, one
    anti-join on primary keys). Each chunk holds its analyses' advisory locks, as a worker
    writing one of them would, so the two never race on a summary.
    """
    ids = [r["id"] for r in await conn.fetch(_OUT_OF_STEP)]
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        async with conn.transaction():
            await lock(conn, sorted(lock_key("analysis", analysis_id) for analysis_id in part))
            await write_summaries(conn, part)
    if ids:
        log.info("analytics summaries brought in step", extra={"analyses": len(ids)})
    return len(ids)
