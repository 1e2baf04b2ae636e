"""The analytics views (schema flowscribe_analytics): every figure checked against an oracle
computed here, in Python, from the payloads sent, never from the worker's code or its SQL."""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
import hashlib
import json
import random
import re
import statistics
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench import payloads
from schemas.decoding import decode_payload
from schemas.message import Callback
from schemas.naming import snake_case
from store.analytics import SUMMARY_FIGURES, UnknownTimeZone, disagreements, set_reporting_time_zone
from store.batch import write_batch
from store.migrations import migrate
from tests.support import CliProcess, eventually, service_env
from tests.test_ops import ops
from tests.test_pipeline import publish_as_gateway

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-analytics-dashboard.json"
UTC = datetime.UTC
FIGURES = {snake_case(field): field for field in SUMMARY_FIGURES}  # view column -> scoring field
EMOTIONS = ("sentiment_score", "joy", "negativity", "anger", "shouting", "disgust", "fear", "sadness")
TERMS = {  # view -> (its term column, payload list, item field)
    "topics_daily": ("topic", "ConversationSentenceTopics", "Topic"),
    "intents_daily": ("intent", "ConversationSentenceIntents", "Intent"),
    "keywords_daily": ("keyword", "ConversationSentenceKeywords", "Keyword"),
    "entities_daily": ("entity_name", "ConversationSentenceEntities", "EntityName"),
}
AGENTS = [uuid.UUID(int=n) for n in (0xA1, 0xB2, 0xC3)]
RECEIVED = datetime.datetime(2026, 3, 1, tzinfo=UTC)


# --- the payloads ---------------------------------------------------------------------------


def conversation(seed: int, agent: uuid.UUID | None, created: datetime.datetime | None) -> dict[str, Any]:
    """A small realistic payload (bench generator) with a chosen agent and creation time, and the
    oddities the views must survive: a null figure, a null term, a term mentioned twice, a
    second agent on one scoring, a sentence without text."""
    payload = payloads.build("small", seed)
    model = payload["ConversationAnalysisModel"]
    model["DateCreated"] = created.isoformat() if created else None
    rng = random.Random(seed)
    scorings = model["ConversationSentenceScoring"]
    for scoring in scorings:
        scoring["AgentID"] = str(agent) if agent else None
    if agent:  # a second agent on one scoring: the conversation's agent is the one most scorings carry
        scorings[0]["AgentID"] = str(AGENTS[(AGENTS.index(agent) + 1) % len(AGENTS)])
    scorings[1][rng.choice(list(FIGURES.values()))] = None
    model["ConversationSentences"][1]["Sentence"] = None
    common = {"DictationID": None, "SentenceID": None, "Confidence": 0.9, "SpeakerLabel": "Customer",
              "IsAgent": False}
    model["ConversationSentenceTopics"] += [
        {"ID": str(uuid.uuid4()), **common, "Topic": "Billing", "Rank": 1.0, "Duration": None,
         "TimeStamp": None, "StartSeconds": None, "EndSeconds": None}
        for _ in range(2)
    ] + [{"ID": str(uuid.uuid4()), **common, "Topic": None, "Rank": None, "Duration": None,
          "TimeStamp": None, "StartSeconds": None, "EndSeconds": None}]
    model["ConversationSentenceIntents"].append({"ID": str(uuid.uuid4()), **common, "Intent": "cancel_service"})
    return payload


def empty_conversation(created: datetime.datetime) -> dict[str, Any]:
    payload = payloads.build("small", 999)
    model = payload["ConversationAnalysisModel"]
    for key, value in list(model.items()):
        if isinstance(value, list):
            model[key] = []
    model["DateCreated"] = created.isoformat()
    return payload


def failed_job() -> dict[str, Any]:
    payload = conversation(777, AGENTS[0], datetime.datetime(2026, 1, 1, 12, tzinfo=UTC))
    payload["Success"] = False
    payload["JobStatus"]["Success"] = False
    payload["JobStatus"]["ErrorMsg"] = "transcription failed"
    return payload


def stored_callback(payload: dict[str, Any], received_at: datetime.datetime = RECEIVED) -> Callback:
    body = json.dumps(payload).encode()
    return Callback(uuid.uuid4(), received_at, "application/json", hashlib.sha256(body).hexdigest(), body,
                    decode_payload(body, "application/json"))


@dataclasses.dataclass
class Sent:
    payload: dict[str, Any]
    received_at: datetime.datetime


def history() -> tuple[list[Sent], list[dict[str, Any]]]:
    """What is sent, in order, and the payloads that must end up stored (the oracle's input).

    The creation times sit around midnight UTC, so New York (UTC-5) puts some of them on the
    previous day; one conversation has no creation time (its receive time counts)."""
    times = [datetime.datetime(2026, 1, 1, 3, 0, tzinfo=UTC), datetime.datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
             datetime.datetime(2026, 1, 2, 4, 30, tzinfo=UTC), datetime.datetime(2026, 1, 2, 20, 0, tzinfo=UTC),
             datetime.datetime(2026, 1, 3, 1, 0, tzinfo=UTC)]
    sent, stored = [], []
    for i in range(12):
        payload = conversation(i, AGENTS[i % 3], times[i % len(times)])
        sent.append(Sent(payload, RECEIVED))
        stored.append(payload)
    no_date = conversation(50, AGENTS[0], None)
    sent.append(Sent(no_date, datetime.datetime(2026, 1, 2, 2, 0, tzinfo=UTC)))
    stored.append(no_date)
    # Two versions of one analysis: the later one (other agent, day, figures) replaces the first.
    first = conversation(60, AGENTS[0], times[0])
    second = conversation(61, AGENTS[2], times[3])
    second["ConversationAnalysisModel"]["ID"] = first["ConversationAnalysisModel"]["ID"]
    sent += [Sent(first, RECEIVED), Sent(second, RECEIVED + datetime.timedelta(hours=1))]
    stored.append(second)
    empty = empty_conversation(times[1])
    sent += [Sent(empty, RECEIVED), Sent(failed_job(), RECEIVED)]
    stored.append(empty)
    return sent, stored


# --- the oracle ------------------------------------------------------------------------------


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def oracle_conversation(payload: dict[str, Any], received_at: datetime.datetime, zone: str) -> dict[str, Any]:
    model = payload["ConversationAnalysisModel"]
    created = datetime.datetime.fromisoformat(model["DateCreated"]) if model["DateCreated"] else None
    sentences, scorings = model["ConversationSentences"], model["ConversationSentenceScoring"]
    agents = collections.Counter(s["AgentID"] for s in scorings if s["AgentID"])
    chars = {flag: sum(len(s["Sentence"] or "") for s in sentences if s["IsAgent"] is flag) for flag in (True, False)}
    row = {
        "analysis_id": uuid.UUID(model["ID"]),
        "job_id": uuid.UUID(payload["JobStatus"]["JobID"]),
        "language_code": model["LanguageCode"],
        "date_created": created,
        "received_at": received_at,
        "day": (created or received_at).astimezone(zoneinfo.ZoneInfo(zone)).date(),
        "agent_id": uuid.UUID(agents.most_common(1)[0][0]) if agents else None,
        "sentences": len(sentences),
        "agent_sentences": sum(1 for s in sentences if s["IsAgent"] is True),
        "customer_sentences": sum(1 for s in sentences if s["IsAgent"] is False),
        "agent_talk_share": chars[True] / (chars[True] + chars[False]) if chars[True] + chars[False] else None,
        "scorings": len(scorings),
        **{column: mean([s[field] for s in scorings]) for column, field in FIGURES.items()},
    }
    for name, (_, key, field) in TERMS.items():
        row[name] = collections.Counter(item[field] for item in model[key] if item[field] is not None)
    row["topics"] = [t for t, _ in sorted(row["topics_daily"].items(), key=lambda kv: (-kv[1], kv[0].encode()))]
    row["intents"] = [t for t, _ in sorted(row["intents_daily"].items(), key=lambda kv: (-kv[1], kv[0].encode()))]
    return row


def oracle(stored: list[dict[str, Any]], received: dict[str, datetime.datetime], zone: str) -> dict[str, Any]:
    conversations = {
        c["analysis_id"]: c
        for c in (oracle_conversation(p, received[p["ConversationAnalysisModel"]["ID"]], zone) for p in stored)
    }
    views: dict[str, Any] = {"conversations": conversations}
    by_agent_day = collections.defaultdict(list)
    by_day = collections.defaultdict(list)
    for c in conversations.values():
        by_agent_day[(c["agent_id"], c["day"])].append(c)
        by_day[c["day"]].append(c)
    views["agent_daily"] = {
        key: {"conversations": len(cs), "sentences": sum(c["sentences"] for c in cs),
              "agent_sentences": sum(c["agent_sentences"] for c in cs),
              "customer_sentences": sum(c["customer_sentences"] for c in cs),
              "agent_talk_share": mean([c["agent_talk_share"] for c in cs]),
              **{f: mean([c[f] for c in cs]) for f in FIGURES}}
        for key, cs in by_agent_day.items()
    }
    views["sentiment_daily"] = {
        day: {"conversations": len(cs), **{f: mean([c[f] for c in cs]) for f in EMOTIONS}}
        for day, cs in by_day.items()
    }
    for name in TERMS:
        daily: dict[tuple[datetime.date, str], dict[str, int]] = collections.defaultdict(
            lambda: {"mentions": 0, "conversations": 0})
        for c in conversations.values():
            for term, n in c[name].items():
                daily[(c["day"], term)]["mentions"] += n
                daily[(c["day"], term)]["conversations"] += 1
        views[name] = dict(daily)
    return views


def approx(expected: dict[str, Any]) -> dict[str, Any]:
    return {k: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for k, v in expected.items()}


async def assert_views_match(db: asyncpg.Pool, expected: dict[str, Any]) -> None:
    rows = {r["analysis_id"]: dict(r) for r in await db.fetch("SELECT * FROM flowscribe_analytics.conversations")}
    assert set(rows) == set(expected["conversations"])
    assert all(set(FIGURES) <= set(row) for row in rows.values())  # every figure is a column
    for analysis_id, want in expected["conversations"].items():
        got = rows[analysis_id]
        assert got == approx({k: got[k] if k == "callback_id" else want[k] for k in got}), analysis_id

    agent_daily: dict[tuple[Any, Any], dict[str, Any]] = {(r["agent_id"], r["day"]): dict(r)
                   for r in await db.fetch("SELECT * FROM flowscribe_analytics.agent_daily")}
    assert set(agent_daily) == set(expected["agent_daily"])
    for key, want in expected["agent_daily"].items():
        got = {k: v for k, v in agent_daily[key].items() if k not in ("agent_id", "day")}
        assert got == approx(want), key

    sentiment = {r["day"]: dict(r) for r in await db.fetch("SELECT * FROM flowscribe_analytics.sentiment_daily")}
    assert {d: {k: v for k, v in r.items() if k != "day"} for d, r in sentiment.items()} == {
        d: approx(w) for d, w in expected["sentiment_daily"].items()}

    for name, (column, _, _) in TERMS.items():
        daily = {(r["day"], r[column]): {"mentions": r["mentions"], "conversations": r["conversations"]}
                 for r in await db.fetch(f"SELECT * FROM flowscribe_analytics.{name}")}
        assert daily == expected[name], name
        assert daily, name  # the payloads do mention terms of every kind


# --- sending ----------------------------------------------------------------------------------


async def send_through_worker(db: asyncpg.Pool, broker: Any, start_worker: Any, sent: list[Sent]) -> dict[str, str]:
    """Publish each payload as the gateway does and wait until the worker has processed all."""
    ids = {}
    for item in sent:
        ids[await publish_as_gateway(broker, json.dumps(item.payload).encode(), received_at=item.received_at)] = item
    start_worker()

    async def all_processed() -> bool:
        return await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == len(sent)

    await eventually(all_processed, what="every callback processed")
    return {r["id"]: r["outcome"] for r in await db.fetch("SELECT id::text, outcome FROM flowscribe.callbacks")}


def received_times(sent: list[Sent]) -> dict[str, datetime.datetime]:
    # The stored version of each analysis is the one received last.
    received: dict[str, datetime.datetime] = {}
    for item in sent:
        model = item.payload["ConversationAnalysisModel"]
        received[model["ID"]] = max(item.received_at, received.get(model["ID"], item.received_at))
    return received


@pytest.fixture
async def reporting_zone(db: asyncpg.Pool):
    """The test may change the reporting time zone; it is UTC again afterwards."""
    yield
    async with db.acquire() as conn:
        await set_reporting_time_zone(conn, "UTC")


class TestViews:
    """Each view's figures equal those computed from the payloads sent, whatever the zone."""

    async def test_views_match_the_payloads_across_zones(self, db, broker, start_worker, reporting_zone):
        sent, stored = history()
        outcomes = await send_through_worker(db, broker, start_worker, sent)
        counts = collections.Counter(outcomes.values())
        # The replaced version is `superseded` if it met its successor in one batch, else `ingested`.
        assert counts["job_failed"] == 1 and counts["ingested"] + counts["superseded"] == len(stored) + 1
        received = received_times(sent)
        await assert_views_match(db, oracle(stored, received, "UTC"))

        # Another zone: every stored day moves (some conversations to the day before).
        async with db.acquire() as conn:
            assert await set_reporting_time_zone(conn, "America/New_York") is True
            assert await set_reporting_time_zone(conn, "America/New_York") is False
        assert await db.fetchval("SELECT time_zone FROM flowscribe_analytics.reporting") == "America/New_York"
        in_new_york = oracle(stored, received, "America/New_York")
        assert {c["day"] for c in in_new_york["conversations"].values()} != {
            c["day"] for c in oracle(stored, received, "UTC")["conversations"].values()}
        await assert_views_match(db, in_new_york)

        # What the worker writes from now on is in the new zone too.
        later = conversation(70, AGENTS[1], datetime.datetime(2026, 1, 3, 2, 0, tzinfo=UTC))
        more = [Sent(later, RECEIVED)]
        await publish_as_gateway(broker, json.dumps(later).encode(), received_at=RECEIVED)

        async def landed() -> bool:
            return await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == len(sent) + 1

        await eventually(landed, what="the later callback")
        await assert_views_match(db, oracle([*stored, later], received_times(sent + more), "America/New_York"))

    async def test_an_unknown_zone_is_refused_and_changes_nothing(self, db, reporting_zone):
        async with db.acquire() as conn:
            with pytest.raises(UnknownTimeZone, match="Mars/Olympus_Mons"):
                await set_reporting_time_zone(conn, "Mars/Olympus_Mons")
        assert await db.fetchval("SELECT time_zone FROM flowscribe.reporting") == "UTC"

    async def test_reprocess_rewrites_a_summary(self, db):
        """The summary follows the stored rows through the store path, reprocessing included."""
        payload = conversation(80, AGENTS[0], datetime.datetime(2026, 1, 1, 12, tzinfo=UTC))
        callback = stored_callback(payload)
        async with db.acquire() as conn:
            await write_batch(conn, [callback])
            expected = oracle([payload], received_times([Sent(payload, RECEIVED)]), "UTC")
            await assert_views_match(db, expected)
            # Summaries damaged by hand (or by a bug since fixed) are rewritten by a reprocess.
            await conn.execute("UPDATE flowscribe.conversation_summaries"
                               " SET score_quality = -1, topics = '{}', topic_mentions = '{}'")
            await write_batch(conn, [dataclasses.replace(callback, reprocess=True)])
        await assert_views_match(db, expected)


async def waiting_for_lock(db: asyncpg.Pool, pid: int) -> bool:
    return await db.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid) is True


class TestSummarise:
    """What flowscribe.summarise() costs a batch does not grow with the database, and a change of
    reporting zone never leaves a summary with a day of the old zone."""

    async def test_a_batch_scans_no_table_whole(self, db):
        # Tables that were never analysed (a new database, autovacuum behind) are where the
        # planner used to choose sequential scans: of every term stored, in every batch
        # (before migration 0007).
        sent, _ = history()
        async with db.acquire() as conn:
            for item in sent:
                await write_batch(conn, [stored_callback(item.payload, item.received_at)])
            assert await conn.fetchval(
                "SELECT count(*) FROM flowscribe.conversation_summaries WHERE topics <> '{}'") > 0
            # Every statement finds rows: each summary and its terms are replaced.
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM flowscribe.analyses")]
            scans = ("SELECT relname, seq_scan, idx_scan FROM pg_stat_xact_user_tables"
                     " WHERE schemaname = 'flowscribe' AND relname <> 'reporting'")  # one row, read whole
            async with conn.transaction():
                # The backend's counts not yet reported include earlier transactions': a difference.
                before = {r["relname"]: (r["seq_scan"], r["idx_scan"]) for r in await conn.fetch(scans)}
                written = await conn.fetchrow("SELECT * FROM flowscribe.summarise($1::uuid[])", ids)
                after = {r["relname"]: (r["seq_scan"], r["idx_scan"]) for r in await conn.fetch(scans)}
                # What workers of the version before 0007 read from it, as they read it.
                assert dict(written) == {"summaries": len(ids), "terms": await conn.fetchval(
                    "SELECT sum(cardinality(topics) + cardinality(intents) + cardinality(keywords)"
                    " + cardinality(entities)) FROM flowscribe.conversation_summaries")}
        seq_scanned = [t for t, (seq, _) in after.items() if seq > before.get(t, (0, 0))[0]]
        assert seq_scanned == []
        assert after["sentence_topics"][1] > before.get("sentence_topics", (0, 0))[1]

    async def test_the_comparison_with_the_analyses_reads_each_table_once(self, db):
        # What `migrate` and `summaries check` read, on tables never analysed: never a lookup
        # per row (a cost growing with the table times the rows found), whatever the planner thinks.
        sent, stored = history()
        async with db.acquire() as conn:
            for item in sent:
                await write_batch(conn, [stored_callback(item.payload, item.received_at)])
            scans = ("SELECT relname, seq_scan + coalesce(idx_scan, 0) AS scans FROM pg_stat_xact_user_tables"
                     " WHERE relname IN ('analyses', 'conversation_summaries') AND schemaname = 'flowscribe'")
            async with conn.transaction():  # the backend's counts not yet reported include earlier ones
                before = {r["relname"]: r["scans"] for r in await conn.fetch(scans)}
                assert await disagreements(conn) == []
                after = {r["relname"]: r["scans"] for r in await conn.fetch(scans)}
        assert len(stored) > 10
        assert {t: n - before.get(t, 0) for t, n in after.items()} == {"analyses": 1, "conversation_summaries": 1}

    async def test_a_change_of_zone_waits_for_a_summary_in_flight(self, db, reporting_zone):
        payload = conversation(90, AGENTS[0], datetime.datetime(2026, 1, 1, 3, 0, tzinfo=UTC))
        analysis_id = uuid.UUID(payload["ConversationAnalysisModel"]["ID"])
        async with db.acquire() as writer, db.acquire() as changer:
            await write_batch(writer, [stored_callback(payload)])
            async with writer.transaction():
                await writer.fetchrow("SELECT * FROM flowscribe.summarise($1::uuid[])", [analysis_id])
                change = asyncio.create_task(set_reporting_time_zone(changer, "America/New_York"))
                await eventually(lambda: waiting_for_lock(db, changer.get_server_pid()),
                                 what="the change of zone waiting for the writer")
                assert not change.done()
            assert await change is True
        # Written under UTC, moved by the change once it had committed: New York's day.
        assert await db.fetchval("SELECT day FROM flowscribe.conversation_summaries") == datetime.date(2025, 12, 31)

    async def test_a_summary_written_during_a_change_of_zone_is_in_the_new_zone(self, db, reporting_zone):
        payload = conversation(91, AGENTS[1], datetime.datetime(2026, 1, 1, 3, 0, tzinfo=UTC))
        async with db.acquire() as writer, db.acquire() as changer:
            async with changer.transaction():
                assert await changer.fetchval("SELECT flowscribe.set_reporting_time_zone('America/New_York')")
                write = asyncio.create_task(write_batch(writer, [stored_callback(payload)]))
                await eventually(lambda: waiting_for_lock(db, writer.get_server_pid()),
                                 what="the writer waiting for the change of zone")
                assert not write.done()
            await write
        # It read the zone after the change committed, not the UTC it would have seen before.
        assert await db.fetchval("SELECT day FROM flowscribe.conversation_summaries") == datetime.date(2025, 12, 31)


class TestMigration:
    """Migration 0003 summarises the analyses stored before it; migrate applies the reporting zone."""

    async def test_migrate_applies_the_reporting_zone_or_says_why_not(self, settings, db, reporting_zone):
        async def migrate_with(zone: str) -> tuple[int, str]:
            env = service_env(settings, FLOWSCRIBE_REPORTING_TIME_ZONE=zone)
            process = await CliProcess.start("migrate", env)
            return await process.exited(), process.output

        code, output = await migrate_with("Mars/Olympus_Mons")
        assert code == 1 and "FLOWSCRIBE_REPORTING_TIME_ZONE" in output and "Mars/Olympus_Mons" in output
        assert await db.fetchval("SELECT time_zone FROM flowscribe_analytics.reporting") == "UTC"
        code, output = await migrate_with("Asia/Kolkata")
        assert code == 0, output
        assert await db.fetchval("SELECT time_zone FROM flowscribe_analytics.reporting") == "Asia/Kolkata"

    async def test_existing_analyses_get_summaries(self, database_url):
        scratch = database_url.rsplit("/", 1)[0] + "/" + database_url.rsplit("/", 1)[1] + "_backfill"
        await migrate(scratch)
        conn = await asyncpg.connect(scratch)
        try:
            sent, stored = history()
            for i, item in enumerate(sent):
                body = json.dumps(item.payload).encode()
                await write_batch(conn, [Callback(uuid.UUID(int=i + 1), item.received_at, "application/json",
                                                  hashlib.sha256(body).hexdigest(), body,
                                                  decode_payload(body, "application/json"))])
            before = [dict(r) for r in await conn.fetch(
                "SELECT * FROM flowscribe_analytics.conversations ORDER BY analysis_id")]
            # The database as it was before 0003, with the same rows. 0003 summarises them into
            # conversation_terms, whose counts 0007 moves into the summaries.
            await conn.execute("""
                DROP SCHEMA flowscribe_analytics CASCADE;
                DROP TABLE flowscribe.conversation_summaries, flowscribe.reporting;
                DROP FUNCTION flowscribe.summarise, flowscribe.set_reporting_time_zone;
                DELETE FROM flowscribe.schema_migrations WHERE version LIKE '0003%' OR version LIKE '0007%';
            """)
            assert await migrate(scratch) == ["0003_analytics", "0007_cheaper_summaries"]
            after = [dict(r) for r in await conn.fetch(
                "SELECT * FROM flowscribe_analytics.conversations ORDER BY analysis_id")]
            assert len(after) == len(stored) and after == before

            # Analyses stored by workers from before 0003 (a rolling upgrade): the next migrate
            # summarises them, and drops a summary whose analysis is gone.
            await conn.execute("DELETE FROM flowscribe.conversation_summaries WHERE analysis_id IN"
                               " (SELECT analysis_id FROM flowscribe.conversation_summaries LIMIT 3)")
            await conn.execute("""
                CREATE TEMPORARY TABLE orphan AS SELECT * FROM flowscribe.conversation_summaries LIMIT 1;
                UPDATE orphan SET analysis_id = gen_random_uuid();
                INSERT INTO flowscribe.conversation_summaries SELECT * FROM orphan;
            """)
            assert await conn.fetchval("SELECT count(*) FROM flowscribe.conversation_summaries") == len(stored) - 2
            assert await migrate(scratch) == []
            again = [dict(r) for r in await conn.fetch(
                "SELECT * FROM flowscribe_analytics.conversations ORDER BY analysis_id")]
            assert again == before
        finally:
            await conn.close()
            admin = await asyncpg.connect(database_url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{scratch.rsplit("/", 1)[1]}" WITH (FORCE)')
            finally:
                await admin.close()

    async def test_a_summary_of_a_replaced_version_is_rewritten(self, database_url, db, settings):
        """An analysis summarised by `migrate` and then replaced by a worker that writes no summary
        (one from before 0003, still running during a rolling upgrade) keeps the replaced version's
        summary; the next `migrate` rewrites it, whatever else of the analysis changed."""
        first = conversation(100, AGENTS[0], datetime.datetime(2026, 1, 1, 3, 0, tzinfo=UTC))
        second = conversation(101, AGENTS[2], datetime.datetime(2026, 1, 2, 20, 0, tzinfo=UTC))
        second["ConversationAnalysisModel"]["ID"] = first["ConversationAnalysisModel"]["ID"]
        # Another analysis whose newer version has the same figures: only the callback it came
        # from (and when) tells its summary from a right one.
        same = conversation(102, AGENTS[1], datetime.datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
        retold = copy.deepcopy(same)
        retold["ConversationAnalysisModel"]["ConversationText"] += " "
        later = RECEIVED + datetime.timedelta(hours=1)
        newer = [stored_callback(second, later), stored_callback(retold, later)]
        async with db.acquire() as conn:
            await write_batch(conn, [stored_callback(first), stored_callback(same)])
            summaries = await conn.fetch("SELECT * FROM flowscribe.conversation_summaries")
            # The old worker stores the newer versions and leaves the summaries as they were.
            await write_batch(conn, newer)
            async with conn.transaction():
                await conn.execute("DELETE FROM flowscribe.conversation_summaries")
                await conn.copy_records_to_table("conversation_summaries", schema_name="flowscribe",
                                                 records=[tuple(r.values()) for r in summaries])
        stale = await db.fetchval("SELECT count(*) FROM flowscribe.conversation_summaries AS s"
                                  " JOIN flowscribe.analyses AS a ON a.id = s.analysis_id"
                                  " WHERE a.callback_id <> s.callback_id")
        assert stale == 2  # the defect's state: the views name the replaced versions
        # A summary with a day of another zone, and one whose analysis is gone, are put right too.
        shifted = conversation(103, AGENTS[0], datetime.datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
        shifted_callback = stored_callback(shifted)
        async with db.acquire() as conn:
            await write_batch(conn, [shifted_callback])
        shifted_id = uuid.UUID(shifted["ConversationAnalysisModel"]["ID"])
        gone = uuid.UUID(int=7)
        await db.execute("UPDATE flowscribe.conversation_summaries SET day = day - 1 WHERE analysis_id = $1",
                         shifted_id)
        await db.execute("INSERT INTO flowscribe.conversation_summaries SELECT (jsonb_populate_record(s,"
                         " jsonb_build_object('analysis_id', $1::uuid))).* FROM flowscribe.conversation_summaries"
                         " AS s LIMIT 1", gone)

        # What the operator's check says of it (changing nothing), and after the repair.
        check = await ops(settings, "summaries", "check", "--json")
        replaced = [uuid.UUID(p["ConversationAnalysisModel"]["ID"]) for p in (second, retold)]
        expected = sorted([(i, "another version") for i in replaced] + [(shifted_id, "another day"),
                                                                         (gone, "analysis gone")])
        assert check.code == 1 and json.loads(check.out) == {
            "agree": False, "analyses": 3, "summaries": 4, "disagreeing": 4, "missing": 0, "another_version": 2,
            "another_day": 1, "analysis_gone": 1,
            "examples": [{"analysis_id": str(i), "why": why} for i, why in expected]}
        assert await ops(settings, "summaries", "check", "--json") == check  # it changed nothing
        assert await migrate(database_url) == []
        await assert_views_match(db, oracle([second, retold, shifted], received_times(
            [Sent(second, later), Sent(retold, later), Sent(shifted, RECEIVED)]), "UTC"))
        assert {r["analysis_id"]: r["callback_id"] for r in await db.fetch(
            "SELECT analysis_id, callback_id FROM flowscribe_analytics.conversations")} == {
            c.analysis.ID: c.id for c in [*newer, shifted_callback] if c.analysis is not None}
        check = await ops(settings, "summaries", "check")
        assert check.code == 0 and "every summary agrees with its analysis (3 analyses, 3 summaries)" in check.out



# --- the dashboard ----------------------------------------------------------------------------

FROM, TO = "2025-12-30T00:00:00Z", "2026-01-05T00:00:00Z"
INTERVALS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def grafana_sql(sql: str, interval: str = "1d") -> str:
    """A panel's SQL with Grafana's PostgreSQL macros expanded as Grafana expands them."""
    sql = sql.replace("$__interval", interval)

    def group(match: re.Match[str]) -> str:
        column, step = (part.strip().strip("'") for part in match.group(1).split(","))
        seconds = int(step[:-1]) * INTERVALS[step[-1]]
        return f'floor(extract(epoch from {column})/{seconds})*{seconds} AS "time"'

    sql = re.sub(r"\$__timeGroupAlias\(([^)]*)\)", group, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)", rf"\1 BETWEEN '{FROM}' AND '{TO}'", sql)
    sql = re.sub(r"\$__time\(([^)]*)\)", r'\1 AS "time"', sql)
    sql = sql.replace("$__timeFrom()", f"'{FROM}'").replace("$__timeTo()", f"'{TO}'")
    assert "$" not in sql, sql  # a macro this test does not know
    return sql


def dashboard_panels() -> list[dict[str, Any]]:
    board = json.loads(DASHBOARD.read_text())
    return [p for p in board["panels"] if p["type"] != "row"]


class TestDashboard:
    """deploy/grafana-analytics-dashboard.json: well-formed, and every panel's SQL runs on real data."""

    def test_well_formed(self):
        board = json.loads(DASHBOARD.read_text())
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
        panels = dashboard_panels()
        assert len({p["id"] for p in panels}) == len(panels)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["query"] == "grafana-postgresql-datasource"
        titles = " ".join(p["title"].lower() for p in panels)
        for needed in ("scorecard", "sentiment", "emotion", "topic", "intent", "silence", "cross-talk"):
            assert needed in titles, needed
        for panel in panels:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["rawSql"].strip() for t in panel["targets"]), panel["title"]

    async def test_every_panel_query_runs_and_returns_rows(self, db, broker, start_worker):
        sent, _ = history()
        await send_through_worker(db, broker, start_worker, sent)
        for panel in dashboard_panels():
            for target in panel["targets"]:
                for interval in ("1d", "7d"):
                    rows = await db.fetch(grafana_sql(target["rawSql"], interval))
                    assert rows, (panel["title"], interval)
                    if target["format"] == "time_series":
                        assert "time" in rows[0], panel["title"]
