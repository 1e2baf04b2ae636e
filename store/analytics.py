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
from collections.abc import AsyncIterator

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

# A page of analyses in key order, each with why its summary disagrees (NULL: it agrees): an
# index range on the analyses' key and a key lookup per summary, however large the tables.
_ANALYSES_PAGE = """
    SELECT a.id, CASE
        WHEN s.analysis_id IS NULL THEN 'missing'
        WHEN s.callback_id <> a.callback_id OR s.received_at <> a.received_at
             OR s.job_id IS DISTINCT FROM a.job_id OR s.language_code IS DISTINCT FROM a.language_code
             OR s.date_created IS DISTINCT FROM a.date_created THEN 'another version'
        WHEN s.day <> (coalesce(a.date_created, a.received_at) AT TIME ZONE r.time_zone)::date
             THEN 'another day'
    END AS why
    FROM (SELECT id, callback_id, job_id, language_code, date_created, received_at
          FROM flowscribe.analyses WHERE id {after} $1 ORDER BY id LIMIT $2) AS a
    CROSS JOIN flowscribe.reporting AS r
    LEFT JOIN flowscribe.conversation_summaries AS s ON s.analysis_id = a.id
    ORDER BY a.id
"""
# A page of summaries in key order, each with 'analysis gone' if its analysis is not stored.
_SUMMARIES_PAGE = """
    SELECT s.analysis_id AS id, CASE WHEN NOT EXISTS (
        SELECT 1 FROM flowscribe.analyses AS a WHERE a.id = s.analysis_id) THEN 'analysis gone' END AS why
    FROM (SELECT analysis_id FROM flowscribe.conversation_summaries
          WHERE analysis_id {after} $1 ORDER BY analysis_id LIMIT $2) AS s
    ORDER BY s.analysis_id
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Disagreement:
    analysis_id: uuid.UUID
    why: str  # MISSING, OTHER_VERSION, OTHER_DAY or ANALYSIS_GONE


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    table: str  # "analyses" or "conversation_summaries": the table read in key order
    rows: int  # its rows read
    found: list[Disagreement]


async def disagreements(conn: Connection, page: int = 5000) -> AsyncIterator[Page]:
    """Every summary that disagrees with the stored analysis: each stored analysis, then each
    summary, a page at a time.

    Each page is one short statement of its own (no snapshot held across the scan, nothing
    locked), reading a table in key order from where the last page ended. What a worker
    writes meanwhile is right by construction; what a page reads may already be put right
    when the caller acts on it, and acting again does no harm.
    """
    for table, sql in (("analyses", _ANALYSES_PAGE), ("conversation_summaries", _SUMMARIES_PAGE)):
        last: uuid.UUID | None = None
        while True:
            rows = await conn.fetch(sql.format(after=">=" if last is None else ">"),
                                    last or uuid.UUID(int=0), page)
            if not rows:
                break
            last = rows[-1]["id"]
            yield Page(table, len(rows), [Disagreement(r["id"], r["why"]) for r in rows if r["why"] is not None])
            if len(rows) < page:
                break


async def repair_summaries(conn: Connection, chunk: int = 200, wait: LockWait = BRIEF) -> int:
    """Rewrite every summary that disagrees with the stored analysis; the number of analyses put right.

    Workers write an analysis's summary with its rows, but workers of a version from before
    migration 0003 do not: during a rolling upgrade, analyses they store after the migration
    have none, and those they replace keep the replaced version's. ``migrate`` runs this every
    time (with nothing out of step, one read of both tables' keys). Each chunk holds its
    analyses' advisory locks, as a worker writing one of them would, so the two never race on
    a summary; its lock waits are bounded (store.lock_wait), so workers never queue behind it
    for long.
    """
    repaired = 0
    async for page in disagreements(conn):
        ids = [d.analysis_id for d in page.found]
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]

            async def rewrite(part: list[uuid.UUID] = part) -> None:
                await lock(conn, sorted(lock_key("analysis", analysis_id) for analysis_id in part))
                await write_summaries(conn, part)

            await in_transaction(conn, "summaries", rewrite, wait)
        if ids:
            repaired += len(ids)
            log.info("analytics summaries put right", extra={"analyses": repaired})
    return repaired
