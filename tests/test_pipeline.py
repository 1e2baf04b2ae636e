"""Callback to rows: HTTP -> gateway -> RabbitMQ -> worker -> PostgreSQL, all real."""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from typing import Any

import aio_pika
import asyncpg
import pytest

from schemas import topology
from schemas.message import callback_message
from schemas.naming import snake_case
from tests.support import JSON_SAMPLE, TOKEN, XML_SAMPLE, eventually

CHILD_LISTS = {
    "ConversationSentences": "sentences",
    "ConversationSentenceEntities": "sentence_entities",
    "ConversationSentenceIntents": "sentence_intents",
    "ConversationSentenceKeywords": "sentence_keywords",
    "ConversationSentenceScoring": "sentence_scorings",
    "ConversationSentenceTopics": "sentence_topics",
}


def callback_url(gateway) -> str:
    return str(gateway.make_url(f"/flowscribe/callback/{TOKEN}"))


async def post(http, gateway, body: bytes, content_type: str = "application/json") -> str:
    async with http.post(callback_url(gateway), data=body, headers={"Content-Type": content_type}) as r:
        assert r.status == 202, await r.text()
        return (await r.json())["id"]


async def outcome_of(db: asyncpg.Pool, callback_id: str) -> str | None:
    return await db.fetchval("SELECT outcome FROM flowscribe.callbacks WHERE id = $1", uuid.UUID(callback_id))


def as_db_value(value: Any, column_type: str) -> object:
    """The sample's JSON value as PostgreSQL gives it back."""
    if value is None:
        return None
    if column_type == "uuid":
        return uuid.UUID(value)
    if column_type == "timestamp with time zone":
        return datetime.datetime.fromisoformat(value)
    if column_type == "double precision":
        return float(value)
    return value


async def column_types(db: asyncpg.Pool, table: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'flowscribe' AND table_name = $1",
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


async def assert_tables_hold_sample(db: asyncpg.Pool) -> None:
    """Every field of the vendor's sample, compared with an oracle independent of the worker's code."""
    sample = json.loads(JSON_SAMPLE)
    model = sample["ConversationAnalysisModel"]
    analysis_id = uuid.UUID(model["ID"])

    analysis = await db.fetchrow("SELECT * FROM flowscribe.analyses")
    assert analysis["id"] == analysis_id
    assert analysis["job_id"] == uuid.UUID(sample["JobStatus"]["JobID"])
    assert analysis["conversation_text"] == model["ConversationText"]
    assert analysis["language_code"] == model["LanguageCode"]
    assert analysis["date_created"] == datetime.datetime.fromisoformat(model["DateCreated"])

    job = await db.fetchrow("SELECT * FROM flowscribe.jobs")
    assert job["job_id"] == uuid.UUID(sample["JobStatus"]["JobID"])
    assert job["success"] is True
    assert job["error_msg"] == sample["JobStatus"]["ErrorMsg"]
    assert job["analysis_id"] == analysis_id

    for key, table in CHILD_LISTS.items():
        types = await column_types(db, table)
        expected: dict[uuid.UUID, dict[str, object]] = {}
        for item in model[key]:
            row = {snake_case(k): as_db_value(v, types[snake_case(k)]) for k, v in item.items()}
            row["analysis_id"] = analysis_id
            expected.setdefault(uuid.UUID(item["ID"]), row)
        stored = [dict(r) for r in await db.fetch(f"SELECT * FROM flowscribe.{table}")]
        # Items repeated in the payload (the vendor's sample repeats its IDs) are stored once.
        assert len(stored) == len(expected), table
        for row in stored:
            assert row == expected[row["id"]], table
        # Every column of the table came from the payload: none was left empty by mistake.
        assert set(types) == set(next(iter(expected.values()))), table


class TestSamplesEndToEnd:
    """The vendor's own samples, posted to the gateway, land field by field."""

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [(JSON_SAMPLE, "application/json"), (XML_SAMPLE, "application/xml"),
         (JSON_SAMPLE, "text/json; charset=utf-8"), (XML_SAMPLE, "text/xml; charset=utf-8")],
        ids=["json", "xml", "text-json", "text-xml"],
    )
    async def test_sample_lands_every_field(self, gateway, http, db, start_worker, body, content_type):
        start_worker()
        callback_id = await post(http, gateway, body, content_type)
        assert await eventually(lambda: outcome_of(db, callback_id), what="the callback row") == "ingested"

        await assert_tables_hold_sample(db)
        ledger = await db.fetchrow("SELECT * FROM flowscribe.callbacks")
        assert ledger["body"] == body  # the exact bytes, never re-serialised
        assert ledger["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert ledger["content_type"] == content_type
        assert ledger["analysis_id"] == uuid.UUID("c655c2ed-9abb-49e0-a8ce-399a897ca5d3")
        assert ledger["job_id"] == uuid.UUID("f848df59-c75b-4a2b-8798-867de380b393")
        assert ledger["received_at"] <= ledger["processed_at"]


def versioned(version: int, *, analysis_id: str | None = None, text: str | None = None) -> bytes:
    """The JSON sample as another version of (by default) the same analysis."""
    sample = json.loads(JSON_SAMPLE)
    model = sample["ConversationAnalysisModel"]
    if analysis_id:
        model["ID"] = analysis_id
    model["ConversationText"] = text or f"version {version}"
    model["ConversationSentences"] = [
        dict(model["ConversationSentences"][0], ID=str(uuid.UUID(int=version * 1000 + i)), Sentence=f"v{version} s{i}")
        for i in range(version)
    ]
    return json.dumps(sample).encode()


async def publish_as_gateway(
    channel: aio_pika.abc.AbstractChannel, body: bytes, *, received_at: datetime.datetime,
    message_id: str | None = None, content_type: str = "application/json",
) -> str:
    """Publish the way the gateway does, with a chosen receive time (to order versions)."""
    message_id = message_id or str(uuid.uuid4())
    exchange = await channel.get_exchange(topology.CALLBACK_EXCHANGE)
    await exchange.publish(
        callback_message(body, content_type, message_id=message_id, received_at=received_at),
        routing_key=topology.CALLBACK_ROUTING_KEY,
    )
    return message_id


T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class TestExactlyOnce:
    """Redelivery, vendor retries and reordered versions change nothing they should not."""

    async def test_the_same_body_twice_is_a_duplicate(self, gateway, http, db, start_worker):
        start_worker()
        first = await post(http, gateway, JSON_SAMPLE)
        second = await post(http, gateway, JSON_SAMPLE)
        outcomes = await eventually(
            lambda: _all_outcomes(db, first, second), what="both callbacks processed"
        )
        assert sorted(outcomes) == ["duplicate", "ingested"]
        assert await db.fetchval("SELECT count(*) FROM flowscribe.sentences") == 1

    async def test_a_redelivered_message_writes_nothing_new(self, db, broker, start_worker):
        message_id = str(uuid.uuid4())
        # The same message (same id) twice: what the broker does after a lost ack.
        for _ in range(2):
            await publish_as_gateway(broker, JSON_SAMPLE, received_at=T0, message_id=message_id)
        worker = start_worker()
        await eventually(lambda: _queue_empty(broker), what="queue drained")
        stopped = await worker.stop()
        assert await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == 1
        assert await db.fetchval("SELECT count(*) FROM flowscribe.sentences") == 1
        assert stopped.outcomes["ingested"] == 1 and stopped.outcomes["redelivered"] == 1

    async def test_versions_converge_whatever_the_delivery_order(self, db, broker, start_worker):
        # The newer version is delivered first; the older one arrives later and changes nothing.
        newer = await publish_as_gateway(broker, versioned(3), received_at=T0 + datetime.timedelta(seconds=5))
        worker = start_worker()
        assert await eventually(lambda: outcome_of(db, newer)) == "ingested"
        older = await publish_as_gateway(broker, versioned(2), received_at=T0)
        assert await eventually(lambda: outcome_of(db, older)) == "superseded"
        # A third, newest version replaces every row of the analysis.
        newest = await publish_as_gateway(broker, versioned(4), received_at=T0 + datetime.timedelta(seconds=9))
        assert await eventually(lambda: outcome_of(db, newest)) == "ingested"
        # The vendor retrying the oldest body, after all that, is a duplicate.
        again = await publish_as_gateway(broker, versioned(2), received_at=T0 + datetime.timedelta(seconds=20))
        assert await eventually(lambda: outcome_of(db, again)) == "duplicate"
        await worker.stop()

        assert await db.fetchval("SELECT conversation_text FROM flowscribe.analyses") == "version 4"
        sentences = [r[0] for r in await db.fetch("SELECT sentence FROM flowscribe.sentences ORDER BY sentence")]
        assert sentences == ["v4 s0", "v4 s1", "v4 s2", "v4 s3"]
        assert await db.fetchval("SELECT callback_id FROM flowscribe.analyses") == uuid.UUID(newest)

    async def test_versions_inside_one_batch_converge_too(self, db, broker, start_worker):
        ids = [
            await publish_as_gateway(broker, versioned(v), received_at=T0 + datetime.timedelta(seconds=v))
            for v in (5, 2, 4, 3)
        ]
        start_worker(batch_size=10, batch_wait=0.5)
        outcomes = await eventually(lambda: _all_outcomes(db, *ids))
        assert outcomes == ["ingested", "superseded", "superseded", "superseded"]
        assert await db.fetchval("SELECT conversation_text FROM flowscribe.analyses") == "version 5"
        assert await db.fetchval("SELECT count(*) FROM flowscribe.sentences") == 5

    async def test_a_failed_job_lands_in_jobs_only(self, gateway, http, db, start_worker):
        body = json.dumps({
            "Success": False,
            "JobStatus": {"JobID": "0b7c4a52-5a47-4bfb-9a37-3bb0e0f0a001", "Success": False,
                          "ErrorMsg": "audio could not be decoded"},
            "ConversationAnalysisModel": None,
        }).encode()
        start_worker()
        callback_id = await post(http, gateway, body)
        assert await eventually(lambda: outcome_of(db, callback_id)) == "job_failed"
        job = await db.fetchrow("SELECT * FROM flowscribe.jobs")
        assert (job["success"], job["error_msg"], job["analysis_id"]) == (False, "audio could not be decoded", None)
        assert job["callback_id"] == uuid.UUID(callback_id)
        assert await db.fetchval("SELECT count(*) FROM flowscribe.analyses") == 0


async def _all_outcomes(db: asyncpg.Pool, *ids: str) -> list[str] | None:
    outcomes = [await outcome_of(db, i) for i in ids]
    return [o for o in outcomes if o] if all(outcomes) else None


async def _queue_empty(channel: aio_pika.abc.AbstractChannel) -> bool:
    queue = await channel.declare_queue(topology.CALLBACK_QUEUE, passive=True)
    return queue.declaration_result.message_count == 0 and queue.declaration_result.consumer_count > 0
