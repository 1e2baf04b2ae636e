"""`migrate` under load: a migration waiting for a table never holds the workers' batches up
for long, and one that cannot get its locks at all gives up whole, saying why."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import uuid

import asyncpg
import pytest

from bench import payloads
from schemas.decoding import decode_payload
from schemas.message import Callback
from store.batch import write_batch
from store.lock_wait import LocksNotGranted, LockWait
from store.migrations import migrate
from tests.support import eventually

# A migration that needs a table the workers write to itself, as an ALTER TABLE does (this one
# changes nothing: the column is NOT NULL already).
PROBE = ("9999_test_needs_analyses_alone", "ALTER TABLE flowscribe.analyses ALTER COLUMN callback_id SET NOT NULL")
QUICK = LockWait(timeout=0.2, first_pause=0.1, longest_pause=0.3)


def a_callback(seed: int) -> Callback:
    body = json.dumps(payloads.build("small", seed)).encode()
    return Callback(uuid.uuid4(), datetime.datetime.now(datetime.UTC), "application/json",
                    hashlib.sha256(body).hexdigest(), body, decode_payload(body, "application/json"))


async def migration_waiting_for_a_lock(db: asyncpg.Pool) -> bool:
    return await db.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query = $1", PROBE[1])


@pytest.fixture
async def probe_forgotten(db: asyncpg.Pool):
    yield
    await db.execute("DELETE FROM flowscribe.schema_migrations WHERE version = $1", PROBE[0])


class TestUnderLoad:
    async def test_a_batch_lands_while_a_migration_waits_for_its_table(self, database_url, db, probe_forgotten):
        async with db.acquire() as analyst, db.acquire() as worker:
            async with analyst.transaction():
                # A long read (an analyst's query) holds the table: the migration must wait for it.
                await analyst.fetchval("SELECT count(*) FROM flowscribe.analyses")
                migrating = asyncio.create_task(migrate(database_url, wait=QUICK, files=[PROBE]))
                await eventually(lambda: migration_waiting_for_a_lock(db), what="the migration waiting")
                # Without a bounded wait, this batch queues behind the migration's request until the
                # analyst's transaction ends (never, here); with it, it lands in the next pause.
                result = await asyncio.wait_for(write_batch(worker, [a_callback(1)]), timeout=30)
                assert list(result.outcomes.values()) == ["ingested"]
                assert not migrating.done()
            # The read is over: the migration gets its table on a retry and is applied once.
            assert await asyncio.wait_for(migrating, timeout=30) == [PROBE[0]]
        assert await db.fetchval("SELECT count(*) FROM flowscribe.schema_migrations WHERE version = $1",
                                 PROBE[0]) == 1

    async def test_a_migration_that_never_gets_its_locks_gives_up_whole(self, database_url, db, probe_forgotten):
        async with db.acquire() as analyst, analyst.transaction():
            await analyst.fetchval("SELECT count(*) FROM flowscribe.analyses")
            with pytest.raises(LocksNotGranted, match=PROBE[0]):
                await migrate(database_url, wait=LockWait(timeout=0.1, first_pause=0.1, give_up_after=0.5),
                              files=[PROBE])
        assert await db.fetchval("SELECT count(*) FROM flowscribe.schema_migrations WHERE version = $1",
                                 PROBE[0]) == 0
