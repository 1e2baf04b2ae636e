"""A prototype, for comparison only: the analytics summaries computed in Python from the
decoded payloads and COPYed, instead of by ``flowscribe.summarise()`` from the rows just
written. Same rows, same tables; the reporting zone is passed in instead of read.
"""

from __future__ import annotations

import collections
import datetime
import statistics
import zoneinfo
from typing import Any

import asyncpg

from schemas.message import Callback
from schemas.naming import snake_case
from store.analytics import SUMMARY_FIGURES

# Summary column -> SentenceScoring attribute, in the table's column order.
FIGURES = {snake_case(field): field for field in SUMMARY_FIGURES}
SUMMARY_COLUMNS = [
    "analysis_id", "callback_id", "job_id", "language_code", "date_created", "received_at", "day", "agent_id",
    "sentences", "agent_sentences", "customer_sentences", "agent_talk_share", "scorings", *FIGURES,
]
TERM_COLUMNS = ["analysis_id", "kind", "term", "mentions", "day"]
TERM_LISTS = (("topic", "ConversationSentenceTopics", "Topic"), ("intent", "ConversationSentenceIntents", "Intent"),
              ("keyword", "ConversationSentenceKeywords", "Keyword"),
              ("entity", "ConversationSentenceEntities", "EntityName"))


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summary_rows(cb: Callback, zone: zoneinfo.ZoneInfo) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    a = cb.analysis
    assert a is not None
    sentences = a.ConversationSentences or []
    scorings = a.ConversationSentenceScoring or []
    day: datetime.date = (a.DateCreated or cb.received_at).astimezone(zone).date()
    agents = collections.Counter(s.AgentID for s in scorings if s.AgentID is not None)
    agent_chars = sum(len(s.Sentence or "") for s in sentences if s.IsAgent is True)
    all_chars = agent_chars + sum(len(s.Sentence or "") for s in sentences if s.IsAgent is False)
    summary = (
        a.ID, cb.id, cb.job_id, a.LanguageCode, a.DateCreated, cb.received_at, day,
        max(agents, key=lambda k: (agents[k], -k.int)) if agents else None,
        len(sentences), sum(1 for s in sentences if s.IsAgent is True),
        sum(1 for s in sentences if s.IsAgent is False),
        agent_chars / all_chars if all_chars else None, len(scorings),
        *(_mean([getattr(s, field) for s in scorings]) for field in FIGURES.values()),
    )
    terms = []
    for kind, attribute, field in TERM_LISTS:
        counts = collections.Counter(getattr(item, field) for item in getattr(a, attribute) or ())
        terms += [(a.ID, kind, term, n, day) for term, n in counts.items() if term is not None]
    return summary, terms


async def write_summaries(conn: asyncpg.Connection, callbacks: list[Callback], zone: str) -> int:
    tz = zoneinfo.ZoneInfo(zone)
    summaries, terms = [], []
    for cb in callbacks:
        summary, rows = summary_rows(cb, tz)
        summaries.append(summary)
        terms += rows
    ids = [cb.analysis.ID for cb in callbacks if cb.analysis is not None]
    await conn.execute("DELETE FROM flowscribe.conversation_terms WHERE analysis_id = ANY($1::uuid[])", ids)
    await conn.execute("DELETE FROM flowscribe.conversation_summaries WHERE analysis_id = ANY($1::uuid[])", ids)
    await conn.copy_records_to_table("conversation_summaries", schema_name="flowscribe",
                                     columns=SUMMARY_COLUMNS, records=summaries)
    await conn.copy_records_to_table("conversation_terms", schema_name="flowscribe",
                                     columns=TERM_COLUMNS, records=terms)
    return len(summaries)
