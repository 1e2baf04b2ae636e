"""The analytics views (migration 0003, schema ``flowscribe_analytics``): what their figures
are, and the reporting time zone, whose calendar days are their "day".

It lives in the database (``flowscribe.reporting``), not in each process, because the
days are computed when the worker writes a summary and must not depend on which worker
wrote it. ``migrate`` applies ``FLOWSCRIBE_REPORTING_TIME_ZONE`` through
``flowscribe.set_reporting_time_zone``, which also moves every stored day to the new zone,
in one transaction that waits for (and holds off) the workers' writes.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

import asyncpg

from store.batch import lock, lock_key, write_summaries
from store.connection import Connection
from store.lock_wait import BRIEF, LockWait, in_transaction

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


# Why a summary disagrees with the stored analysis. A summary is computed from one version of
# its analysis; the columns it copies from the analysis row name that version (the callback it
# came from first among them), so comparing them finds a summary of a replaced version however
# alike the two versions' figures are. Its day must be the analysis's day in the zone.
MISSING = "missing"
OTHER_VERSION = "another version"
OTHER_DAY = "another day"
ANALYSIS_GONE = "analysis gone"

# Every summary that disagrees with the stored analysis, and why. Both tables are read once,
# whole, and joined on their keys: a FULL JOIN, which PostgreSQL runs only as a hash or merge
# join, never as a lookup per row, whatever its statistics say (missing or stale ones once made
# summarise() scan whole tables per batch, migration 0007). Reading by key a page at a time was
# measured and rejected: uuid keys lie all over the heap, so every page of 5,000 read nearly
# every block of both tables (200,000 analyses: 4.5-5.0 s, against 0.8-1.2 s for this).
_DISAGREEING = """
    SELECT id, why FROM (
        SELECT coalesce(a.id, s.analysis_id) AS id, CASE
            WHEN s.analysis_id IS NULL THEN 'missing'
            WHEN a.id IS NULL THEN 'analysis gone'
            WHEN s.callback_id <> a.callback_id OR s.received_at <> a.received_at
                 OR s.job_id IS DISTINCT FROM a.job_id OR s.language_code IS DISTINCT FROM a.language_code
                 OR s.date_created IS DISTINCT FROM a.date_created THEN 'another version'
            WHEN s.day <> (coalesce(a.date_created, a.received_at)
                           AT TIME ZONE (SELECT time_zone FROM flowscribe.reporting))::date THEN 'another day'
        END AS why
        FROM flowscribe.analyses AS a
        FULL JOIN flowscribe.conversation_summaries AS s ON s.analysis_id = a.id
    ) AS compared
    WHERE why IS NOT NULL
    ORDER BY id
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Disagreement:
    analysis_id: uuid.UUID
    why: str  # MISSING, OTHER_VERSION, OTHER_DAY or ANALYSIS_GONE


async def disagreements(conn: Connection) -> list[Disagreement]:
    """Every summary that disagrees with the stored analysis, in key order (one statement, which
    locks nothing a worker waits for). What a worker writes meanwhile is right by construction;
    one found may already be put right when the caller acts on it, and acting again does no harm."""
    async with conn.transaction():
        # JIT would compile it for longer than the join takes (about 1 s of 2 on 200,000 analyses).
        await conn.execute("SET LOCAL jit = off")
        rows = await conn.fetch(_DISAGREEING)
    return [Disagreement(r["id"], r["why"]) for r in rows]


async def repair_summaries(conn: Connection, chunk: int = 200, wait: LockWait = BRIEF) -> int:
    """Rewrite every summary that disagrees with the stored analysis; the number of analyses put right.

    Workers write an analysis's summary with its rows, but workers of a version from before
    migration 0003 do not: during a rolling upgrade, analyses they store after the migration
    have none, and those they replace keep the replaced version's. ``migrate`` runs this every
    time (with nothing out of step, one read of both tables). Each chunk holds its
    analyses' advisory locks, as a worker writing one of them would, so the two never race on
    a summary; its lock waits are bounded (store.lock_wait), so workers never queue behind it
    for long.
    """
    ids = [d.analysis_id for d in await disagreements(conn)]
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]

        async def rewrite(part: list[uuid.UUID] = part) -> None:
            await lock(conn, sorted(lock_key("analysis", analysis_id) for analysis_id in part))
            await write_summaries(conn, part)

        await in_transaction(conn, "summaries", rewrite, wait)
        log.info("analytics summaries put right", extra={"analyses": start + len(part), "of": len(ids)})
    return len(ids)
