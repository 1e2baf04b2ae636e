"""A prototype, for comparison only: the analytics summaries computed in Python from the
decoded payloads and COPYed, instead of by ``flowscribe.summarise()`` from the rows just
written. Same rows; the reporting zone is passed in instead of read.
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
# Per kind of term: its columns (the terms, their mentions), the payload list and the item's field.
TERM_LISTS = ((("topics", "topic_mentions"), "ConversationSentenceTopics", "Topic"),
              (("intents", "intent_mentions"), "ConversationSentenceIntents", "Intent"),
              (("keywords", "keyword_mentions"), "ConversationSentenceKeywords", "Keyword"),
              (("entities", "entity_mentions"), "ConversationSentenceEntities", "EntityName"))
SUMMARY_COLUMNS = [
    "analysis_id", "callback_id", "job_id", "language_code", "date_created", "received_at", "day", "agent_id",
    "sentences", "agent_sentences", "customer_sentences", "agent_talk_share", "scorings", *FIGURES,
    *(column for columns, _, _ in TERM_LISTS for column in columns),
]


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summary_row(cb: Callback, zone: zoneinfo.ZoneInfo) -> tuple[Any, ...]:
    a = cb.analysis
    assert a is not None
    sentences = a.ConversationSentences or []
    scorings = a.ConversationSentenceScoring or []
    day: datetime.date = (a.DateCreated or cb.received_at).astimezone(zone).date()
    agents = collections.Counter(s.AgentID for s in scorings if s.AgentID is not None)
    agent_chars = sum(len(s.Sentence or "") for s in sentences if s.IsAgent is True)
    all_chars = agent_chars + sum(len(s.Sentence or "") for s in sentences if s.IsAgent is False)
    terms: list[list[Any]] = []
    for _, attribute, field in TERM_LISTS:
        counts = collections.Counter(getattr(item, field) for item in getattr(a, attribute) or ())
        # Most mentioned first, then in byte order (the columns' collation is "C").
        ranked = sorted(((n, t) for t, n in counts.items() if t is not None), key=lambda c: (-c[0], c[1].encode()))
        terms += [[t for _, t in ranked], [n for n, _ in ranked]]
    return (
        a.ID, cb.id, cb.job_id, a.LanguageCode, a.DateCreated, cb.received_at, day,
        max(agents, key=lambda k: (agents[k], -k.int)) if agents else None,
        len(sentences), sum(1 for s in sentences if s.IsAgent is True),
        sum(1 for s in sentences if s.IsAgent is False),
        agent_chars / all_chars if all_chars else None, len(scorings),
        *(_mean([getattr(s, field) for s in scorings]) for field in FIGURES.values()),
        *terms,
    )


async def write_summaries(conn: asyncpg.Connection, callbacks: list[Callback], zone: str) -> int:
    tz = zoneinfo.ZoneInfo(zone)
    summaries = [summary_row(cb, tz) for cb in callbacks]
    ids = [cb.analysis.ID for cb in callbacks if cb.analysis is not None]
    await conn.execute("DELETE FROM flowscribe.conversation_summaries WHERE analysis_id = ANY($1::uuid[])", ids)
    await conn.copy_records_to_table("conversation_summaries", schema_name="flowscribe",
                                     columns=SUMMARY_COLUMNS, records=summaries)
    return len(summaries)
