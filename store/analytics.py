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
