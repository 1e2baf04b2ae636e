"""``summaries check``: does every analytics summary agree with its stored analysis?

What an operator runs after an upgrade (README, "Upgrading"): the analytics views read
``flowscribe.conversation_summaries``, and a summary that is missing, names a replaced version
of its analysis, has another day than the reporting zone gives, or outlives its analysis shows
wrong figures. It reads both tables once (store.analytics.disagreements), changes nothing,
and exits 0 only when every summary agrees; ``flowscribe-ingest migrate`` rewrites those that
do not.
"""

from __future__ import annotations

import argparse
import collections

import asyncpg

from ops import connect
from ops.errors import OpsError
from ops.render import Console, json_line, table
from runtime.settings import Settings
from store.analytics import ANALYSIS_GONE, MISSING, OTHER_DAY, OTHER_VERSION, disagreements

REASONS = (MISSING, OTHER_VERSION, OTHER_DAY, ANALYSIS_GONE)


async def check_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with connect.database(settings) as conn:
        try:
            analyses = await conn.fetchval("SELECT count(*) FROM flowscribe.analyses")
            summaries = await conn.fetchval("SELECT count(*) FROM flowscribe.conversation_summaries")
        except asyncpg.UndefinedTableError:
            raise OpsError("the database has no analytics summaries; run `flowscribe-ingest migrate`") from None
        # One statement reads both tables whole: say what it is doing while it runs.
        console.note(f"checking {analyses} analyses against {summaries} summaries")
        found = await disagreements(conn)
    reasons = collections.Counter(d.why for d in found)
    examples = found[:args.limit]
    if args.json:
        json_line(console, {
            "agree": not found, "analyses": analyses, "summaries": summaries, "disagreeing": len(found),
            **{why.replace(" ", "_"): reasons[why] for why in REASONS},
            "examples": [{"analysis_id": d.analysis_id, "why": d.why} for d in examples],
        })
    elif found:
        table(console, [("analysis_id", "ANALYSIS"), ("why", "WHY")],
              [{"analysis_id": d.analysis_id, "why": d.why} for d in examples])
        counted = ", ".join(f"{why} {reasons[why]}" for why in REASONS if reasons[why])
        console.note(f"{len(found)} of the summaries disagree with their analyses ({counted}; the first"
                     f" {len(examples)} above): `flowscribe-ingest migrate` rewrites them")
    else:
        console.say(f"every summary agrees with its analysis ({analyses} analyses, {summaries} summaries)")
    return 1 if found else 0
