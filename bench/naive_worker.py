"""The naive baseline: the straightforward consumer one would write first.

Standard-library ``json``, one INSERT per row, one transaction per callback,
ack after its commit. Same queue, same prefetch, same tables and rows as the
worker (so rows/s compare), none of its batching, typed decoding or COPY.
Runs until SIGTERM ends it (what is unacked goes back to the queue); logs ``{"event": "consuming"}`` when it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json

import aio_pika
import asyncpg

from schemas import topology
from schemas.naming import snake_case
from schemas.payload import CHILD_TABLES, Sentence, SentenceScoring, SentenceTopic

_DATES = {name for struct in (Sentence, SentenceScoring, SentenceTopic) for name in struct.__struct_fields__
          if name in ("DateCreated", "Date", "DateUpdated", "TimeStamp")}


def _value(name: str, value: object) -> object:
    if value is not None and name in _DATES:
        return datetime.datetime.fromisoformat(value)  # type: ignore[arg-type]
    return value


def _insert(table: str, columns: list[str]) -> str:
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO flowscribe.{table} ({', '.join(columns)}) VALUES ({placeholders})"


async def store(conn: asyncpg.Connection, message: aio_pika.abc.AbstractIncomingMessage) -> None:
    body = message.body
    payload = json.loads(body)
    job = payload["JobStatus"]
    analysis = payload["ConversationAnalysisModel"]
    received = datetime.datetime.fromisoformat(message.headers[topology.HEADER_RECEIVED_AT])  # type: ignore[arg-type]
    async with conn.transaction():
        await conn.execute(
            _insert("callbacks", ["id", "received_at", "content_type", "body_sha256", "body", "outcome",
                                  "analysis_id", "job_id"]),
            message.message_id, received, message.content_type, hashlib.sha256(body).hexdigest(), body,
            "ingested", analysis["ID"], job["JobID"])
        await conn.execute(
            _insert("jobs", ["job_id", "success", "error_msg", "analysis_id", "received_at", "callback_id"]),
            job["JobID"], job["Success"], job["ErrorMsg"], analysis["ID"], received, message.message_id)
        await conn.execute(
            _insert("analyses", ["id", "job_id", "conversation_text", "language_code", "date_created",
                                 "received_at", "callback_id"]),
            analysis["ID"], job["JobID"], analysis["ConversationText"], analysis["LanguageCode"],
            datetime.datetime.fromisoformat(analysis["DateCreated"]), received, message.message_id)
        for attribute, (table, struct) in CHILD_TABLES.items():
            fields = struct.__struct_fields__
            sql = _insert(table, ["analysis_id", *map(snake_case, fields)])
            for item in analysis.get(attribute) or ():
                await conn.execute(sql, analysis["ID"], *(_value(f, item.get(f)) for f in fields))


async def run(amqp_url: str, database_url: str, prefetch: int) -> None:
    conn = await asyncpg.connect(database_url)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        declared = await topology.declare(channel)
        async with declared.callback_queue.iterator() as messages:
            print(json.dumps({"event": "consuming"}), flush=True)
            async for message in messages:
                await store(conn, message)
                await message.ack()
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("amqp_url")
    parser.add_argument("database_url")
    parser.add_argument("--prefetch", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.amqp_url, args.database_url, args.prefetch))


if __name__ == "__main__":
    main()
