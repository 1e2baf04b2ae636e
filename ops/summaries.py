"""``summaries check``: does every analytics summary agree with its stored analysis?

What an operator runs after an upgrade (README, "Upgrading"): the analytics views read
``flowscribe.conversation_summaries``, and a summary that is missing, names a replaced version
of its analysis, has another day than the reporting zone gives, or outlives its analysis shows
wrong figures. It reads both tables by key a page at a time (store.analytics.disagreements),
changes nothing, and exits 0 only when every summary agrees; ``flowscribe-ingest migrate``
rewrites those that do not.
"""

from __future__ import annotations

import argparse
import collections

import asyncpg

from ops import connect
from ops.errors import OpsError
from ops.render import Console, Progress, json_line, table
from runtime.settings import Settings
from store.analytics import ANALYSIS_GONE, MISSING, OTHER_DAY, OTHER_VERSION, Disagreement, disagreements

REASONS = (MISSING, OTHER_VERSION, OTHER_DAY, ANALYSIS_GONE)


async def check_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with connect.database(settings) as conn:
        try:
            total = await conn.fetchval("SELECT (SELECT count(*) FROM flowscribe.analyses)"
                                        " + (SELECT count(*) FROM flowscribe.conversation_summaries)")
        except asyncpg.UndefinedTableError:
            raise OpsError("the database has no analytics summaries; run `flowscribe-ingest migrate`") from None
        progress = Progress(console, "checking", total)
        read: collections.Counter[str] = collections.Counter()
        reasons: collections.Counter[str] = collections.Counter()
        examples: list[Disagreement] = []
        async for page in disagreements(conn):
            read[page.table] += page.rows
            reasons.update(d.why for d in page.found)
            examples += page.found[: max(0, args.limit - len(examples))]
            progress.update(min(total, read.total()), disagreeing=reasons.total())
        progress.close()
    disagreeing = reasons.total()
    if args.json:
        json_line(console, {
            "agree": disagreeing == 0, "analyses": read["analyses"], "summaries": read["conversation_summaries"],
            "disagreeing": disagreeing, **{why.replace(" ", "_"): reasons[why] for why in REASONS},
            "examples": [{"analysis_id": d.analysis_id, "why": d.why} for d in examples],
        })
    elif disagreeing:
        table(console, [("analysis_id", "ANALYSIS"), ("why", "WHY")],
              [{"analysis_id": d.analysis_id, "why": d.why} for d in examples])
        counted = ", ".join(f"{why} {reasons[why]}" for why in REASONS if reasons[why])
        console.note(f"{disagreeing} of the summaries disagree with their analyses ({counted}; the first"
                     f" {len(examples)} above): `flowscribe-ingest migrate` rewrites them")
    else:
        console.say(f"every summary agrees with its analysis ({read['analyses']} analyses,"
                    f" {read['conversation_summaries']} summaries)")
    return 1 if disagreeing else 0
