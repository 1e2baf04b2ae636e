"""The worker: poison goes to the dead-letter queue with its reason, good neighbours land,
a database outage dead-letters nothing, and stopping loses nothing."""

from __future__ import annotations

import signal
import uuid
from typing import cast

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from schemas import topology
from store.batch import lock_key
from tests.support import JSON_SAMPLE, XML_SAMPLE, CliProcess, TcpProxy, eventually, service_env
from tests.test_pipeline import T0, publish_as_gateway, versioned
from worker.acks import AckWindow


async def dead_letters(channel: aio_pika.abc.AbstractChannel) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Everything in the dead-letter queue (read and acked: the test owns the vhost)."""
    queue = await channel.get_queue(topology.DEAD_LETTER_QUEUE)
    found = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        found.append(message)
    return found


async def queue_depth(channel: aio_pika.abc.AbstractChannel, name: str = topology.CALLBACK_QUEUE) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count or 0


async def stored(db: asyncpg.Pool) -> int:
    return await db.fetchval("SELECT count(*) FROM flowscribe.callbacks")


class TestPoison:
    """A message that cannot be landed is dead-lettered with the reason; its batch still lands."""

    async def test_undecodable_messages_are_dead_lettered_and_neighbours_land(self, db, broker, start_worker):
        good = [await publish_as_gateway(broker, versioned(1, analysis_id=str(uuid.uuid4())), received_at=T0)
                for _ in range(3)]
        bad_json = await publish_as_gateway(broker, b'{"Success": tru', received_at=T0)
        bad_xml = await publish_as_gateway(broker, b"<PayLoadSample><Success>true</Succ", received_at=T0,
                                           content_type="application/xml")
        wrong_type = await publish_as_gateway(broker, b'{"ConversationAnalysisModel": {"ID": 5}}', received_at=T0)
        good.append(await publish_as_gateway(broker, XML_SAMPLE, received_at=T0, content_type="text/xml"))
        start_worker(batch_size=50, batch_wait=0.5)  # all of them in one batch

        await eventually(lambda: _count_is(db, len(good)), what="the good callbacks")
        letters = {m.message_id: m for m in await eventually(lambda: _dead_letters_n(broker, 3))}
        assert set(letters) == {bad_json, bad_xml, wrong_type}
        for message_id, message in letters.items():
            headers = message.headers
            assert headers[topology.HEADER_ERROR_STAGE] == "decode"
            assert headers[topology.HEADER_ERROR_CLASS] == "PayloadDecodeError"
            assert headers[topology.HEADER_ERROR].startswith("PayloadDecodeError: ")
            assert headers[topology.HEADER_DEAD_LETTERED_AT]
            # The original body and properties travel with it.
            assert message.message_id == message_id
            assert topology.HEADER_RECEIVED_AT in headers
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert "ConversationAnalysisModel.ID" in letters[wrong_type].headers[topology.HEADER_ERROR]
        assert letters[bad_json].body == b'{"Success": tru'
        assert await queue_depth(broker) == 0

    async def test_a_message_without_gateway_properties_is_dead_lettered(self, db, broker, start_worker):
        exchange = await broker.get_exchange(topology.CALLBACK_EXCHANGE)
        await exchange.publish(aio_pika.Message(JSON_SAMPLE, content_type="application/json"),
                               routing_key=topology.CALLBACK_ROUTING_KEY)
        start_worker()
        [letter] = await eventually(lambda: _dead_letters_n(broker, 1))
        assert letter.headers[topology.HEADER_ERROR_STAGE] == "validate"
        assert letter.headers[topology.HEADER_ERROR].startswith("InvalidMessage: message has neither")

    async def test_a_row_the_database_refuses_is_isolated(self, db, broker, start_worker):
        # A constraint only this test adds: the database, not the decoder, refuses one message.
        await db.execute("ALTER TABLE flowscribe.sentences ADD CONSTRAINT test_refuse"
                         " CHECK (sentence IS DISTINCT FROM 'refused by the database')")
        try:
            ids = []
            for i in range(9):
                body = versioned(1, analysis_id=str(uuid.uuid4()))
                if i == 4:
                    body = body.replace(b"v1 s0", b"refused by the database")
                ids.append(await publish_as_gateway(broker, body, received_at=T0))
            start_worker(batch_size=50, batch_wait=0.5)
            [letter] = await eventually(lambda: _dead_letters_n(broker, 1))
            await eventually(lambda: _count_is(db, 8), what="the eight good callbacks")
        finally:
            await db.execute("ALTER TABLE flowscribe.sentences DROP CONSTRAINT test_refuse")
        assert letter.message_id == ids[4]
        assert letter.headers[topology.HEADER_ERROR_STAGE] == "database"
        assert letter.headers[topology.HEADER_ERROR_CLASS] == "CheckViolationError"
        assert "test_refuse" in letter.headers[topology.HEADER_ERROR]
        assert await db.fetchval("SELECT count(*) FROM flowscribe.callbacks WHERE id = $1", uuid.UUID(ids[4])) == 0


class TestDatabaseOutage:
    """An unreachable database is not the message's fault: nothing is dead-lettered, all lands later."""

    async def test_messages_wait_for_the_database_and_then_land(self, db, broker, settings, start_worker):
        proxy = TcpProxy("127.0.0.1", 5432)
        await proxy.open()
        await proxy.close()  # the database is "down" from the worker's side
        for _ in range(5):
            await publish_as_gateway(broker, versioned(1, analysis_id=str(uuid.uuid4())), received_at=T0)
        worker = start_worker(database_url=proxy.url(settings.database_url), database_retry_max_delay=0.2)
        try:
            # The worker takes the messages and holds them: none is acked, none dead-lettered.
            await eventually(lambda: _depth_is(broker, 0), what="the worker to take the messages")
            assert await stored(db) == 0
            assert await dead_letters(broker) == []
            await proxy.open()
            await eventually(lambda: _count_is(db, 5), what="the callbacks after the database came back")
        finally:
            await worker.stop()
            await proxy.close()
        assert await dead_letters(broker) == []
        outcomes = [r[0] for r in await db.fetch("SELECT outcome FROM flowscribe.callbacks")]
        assert outcomes == ["ingested"] * 5


class TestGracefulShutdown:
    """SIGTERM: stop consuming, commit the batch in hand, ack, exit 0; nothing lost or doubled."""

    async def test_sigterm_with_a_batch_in_flight(self, db, broker, settings):
        ids = [await publish_as_gateway(broker, versioned(1, analysis_id=str(uuid.uuid4())), received_at=T0)
               for _ in range(30)]
        # Hold one of the keys the worker's first batch will lock: its transaction blocks mid-flight.
        blocker = await db.acquire()
        tx = blocker.transaction()
        await tx.start()
        key = _first_lock_key(ids[0])
        await blocker.execute("SELECT pg_advisory_xact_lock($1)", key)

        worker = await CliProcess.start("worker", service_env(
            settings, FLOWSCRIBE_WORKER_BATCH_SIZE="10", FLOWSCRIBE_WORKER_PREFETCH="10",
            FLOWSCRIBE_WORKER_BATCH_WAIT="0.5"))
        try:
            await eventually(lambda: _waiting_on_lock(db), what="the worker's batch to block on the lock")
            worker.send_signal(signal.SIGTERM)
            await worker.event("stop requested")
            assert worker.process.returncode is None  # it does not abandon the batch in hand
            await tx.rollback()
            await db.release(blocker)
            blocker = None
            code = await worker.stop()
        finally:
            if blocker is not None:
                await tx.rollback()
                await db.release(blocker)
            if worker.process.returncode is None:
                worker.process.kill()
        log = worker.output
        assert code == 0, log
        assert "stop requested" in log and "worker stopped" in log
        landed = await stored(db)
        assert landed >= 10  # the blocked batch was committed, not dropped
        # Everything else is still queued (returned unacked), nothing is lost:
        assert landed + await _depth_when_settled(broker) == 30


def _first_lock_key(message_id: str) -> int:
    return lock_key("message", uuid.UUID(message_id))


async def _waiting_on_lock(db: asyncpg.Pool) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))


async def _depth_when_settled(broker) -> int:
    # Unacked messages return to the queue when the worker's connection closes.
    async def settled():
        queue = await broker.declare_queue(topology.CALLBACK_QUEUE, passive=True)
        result = queue.declaration_result
        return (result.message_count,) if result.consumer_count == 0 else None
    (depth,) = await eventually(settled, what="the worker's connection to close")
    return depth


async def _count_is(db: asyncpg.Pool, n: int) -> bool:
    count = await stored(db)
    assert count <= n, f"{count} callbacks stored, expected {n}"
    return count == n


async def _depth_is(broker, n: int) -> bool:
    return await queue_depth(broker) == n


async def _dead_letters_n(broker, n: int):
    queue = await broker.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
    if queue.declaration_result.message_count < n:
        return None
    return await dead_letters(broker)


class TestTransientRetries:
    """A transient failure comes back after a growing delay; past the limit it is dead-lettered as exhausted."""

    CONFLICT_TRIGGER = """
        CREATE FUNCTION flowscribe.test_conflict() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.sentence = 'collides every time' THEN
                RAISE EXCEPTION 'simulated serialization failure' USING ERRCODE = 'serialization_failure';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_conflict BEFORE INSERT ON flowscribe.sentences
            FOR EACH ROW EXECUTE FUNCTION flowscribe.test_conflict();
    """
    DROP_TRIGGER = """
        DROP TRIGGER IF EXISTS test_conflict ON flowscribe.sentences;
        DROP FUNCTION IF EXISTS flowscribe.test_conflict();
    """

    def colliding(self) -> bytes:
        return versioned(1, analysis_id=str(uuid.uuid4())).replace(b"v1 s0", b"collides every time")

    async def test_exhausted_after_max_attempts(self, db, broker, start_worker):
        await db.execute(self.CONFLICT_TRIGGER)
        try:
            good = await publish_as_gateway(broker, versioned(1, analysis_id=str(uuid.uuid4())), received_at=T0)
            bad = await publish_as_gateway(broker, self.colliding(), received_at=T0)
            worker = start_worker(max_attempts=2, batch_wait=0.3)
            [letter] = await eventually(lambda: _dead_letters_n(broker, 1), what="the exhausted message")
            stopped = await worker.stop()
        finally:
            await db.execute(self.DROP_TRIGGER)
        assert letter.message_id == bad
        assert letter.headers[topology.HEADER_ERROR_STAGE] == "retry"
        assert letter.headers[topology.HEADER_ERROR_CLASS] == "RetriesExhausted"
        assert letter.headers[topology.HEADER_ERROR] == (
            "exhausted after 2 attempts; last error: SerializationError: simulated serialization failure")
        assert letter.headers[topology.HEADER_ATTEMPTS] == 1  # one retry happened before giving up
        # It came back through the 1-second retry queue, and its neighbour was not held up.
        assert any(d["queue"] == topology.retry_queue(1) for d in letter.headers["x-death"])
        assert await outcome(db, good) == "ingested"
        assert stopped.outcomes["retried"] == 1

    async def test_lands_when_the_failure_passes(self, db, broker, start_worker):
        await db.execute(self.CONFLICT_TRIGGER)
        try:
            bad = await publish_as_gateway(broker, self.colliding(), received_at=T0)
            start_worker(max_attempts=5)
            await eventually(lambda: _depth_is_at_least(broker, topology.retry_queue(1), 1),
                             what="the first retry to be scheduled")
        finally:
            await db.execute(self.DROP_TRIGGER)
        assert await eventually(lambda: outcome(db, bad), what="the retried callback") == "ingested"
        assert await dead_letters(broker) == []

    def test_delays_grow_per_attempt(self):
        delays = [topology.retry_delay(attempt) for attempt in range(1, 8)]
        assert delays == sorted(delays) and delays[0] == 1 and delays[-1] == topology.RETRY_DELAYS_SECONDS[-1]


async def outcome(db: asyncpg.Pool, message_id: str) -> str | None:
    return await db.fetchval("SELECT outcome FROM flowscribe.callbacks WHERE id = $1", uuid.UUID(message_id))


async def _depth_is_at_least(broker, queue: str, n: int) -> bool:
    return await queue_depth(broker, queue) >= n


class TestCollectorTuning:
    """The worker runs the cyclic GC less often, and leaves the process as it found it."""

    def test_thresholds_and_freeze_apply_inside_and_are_undone_after(self):
        import gc

        from runtime.gc_tuning import BULK_THRESHOLDS, collecting_less_often

        before = gc.get_threshold()
        assert before != BULK_THRESHOLDS
        with collecting_less_often():
            assert gc.get_threshold() == BULK_THRESHOLDS
            assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


class TestOneAckPerBatch:
    """A prefilled queue is acked in far fewer frames than messages, and nothing is left unsettled."""

    async def test_batches_take_one_ack_frame_and_moved_messages_settle_the_window(self, db, broker, start_worker):
        for i in range(30):
            await publish_as_gateway(broker, versioned(1, analysis_id=str(uuid.uuid4())), received_at=T0)
            if i in (4, 17):  # dead-lettered: settled by their move, not by a batch ack
                await publish_as_gateway(broker, b'{"Success": tru', received_at=T0)
        running = start_worker(batch_size=10, batch_wait=0.5)
        await eventually(lambda: _count_is(db, 30), what="the good callbacks")
        await eventually(lambda: _dead_letters_n(broker, 2), what="the poison")
        worker = await running.stop()
        assert worker.acks["messages"] == 30
        # The oldest batch in flight always gets one frame; one overtaking it is acked per message.
        assert worker.acks["frames"] <= 30 - 9
        assert worker.unsettled == 0
        assert await queue_depth(broker) == 0


class _Delivery:
    """The part of an aio-pika delivery that AckWindow uses: its tag and ack()."""

    def __init__(self, tag: int, frames: list[tuple[int, bool]]) -> None:
        self.delivery_tag = tag
        self._frames = frames

    async def ack(self, multiple: bool = False) -> None:
        self._frames.append((self.delivery_tag, multiple))


class TestAckWindow:
    """One basic.ack(multiple=True) per batch, only when no older delivery is still unsettled."""

    @staticmethod
    def _window(n: int) -> tuple[AckWindow, list[AbstractIncomingMessage], list[tuple[int, bool]]]:
        frames: list[tuple[int, bool]] = []
        window = AckWindow()
        # Stand-ins typed as what they stand in for: AckWindow uses only the tag and ack().
        deliveries = [cast(AbstractIncomingMessage, _Delivery(tag, frames)) for tag in range(1, n + 1)]
        for d in deliveries:
            window.delivered(d)
        return window, deliveries, frames

    async def test_batches_committed_in_order_take_one_frame_each(self):
        window, d, frames = self._window(6)
        await window.ack(d[0:3])
        await window.ack(d[3:6])
        assert frames == [(3, True), (6, True)]
        assert not any(window.owns(x) for x in d)

    async def test_a_batch_overtaking_an_older_one_is_acked_one_by_one(self):
        window, d, frames = self._window(6)
        await window.ack(d[3:6])  # the older batch (1-3) is still being written
        assert frames == [(4, False), (5, False), (6, False)]
        await window.ack(d[0:3])
        assert frames[3:] == [(3, True)]

    async def test_messages_settled_on_their_own_do_not_hold_the_window(self):
        window, d, frames = self._window(5)
        window.settled(d[1])  # dead-lettered: acked by the move itself
        await window.ack([d[0], d[2]])
        assert frames == [(3, True)]

    async def test_a_message_left_unsettled_forces_single_acks_after_it(self):
        window, d, frames = self._window(4)
        # d[0] is held (e.g. left for redelivery at shutdown): acking past it would settle it.
        await window.ack(d[1:4])
        assert frames == [(2, False), (3, False), (4, False)]
        assert window.owns(d[0])

    async def test_a_message_of_another_channel_is_not_owned(self):
        window, d, _ = self._window(2)
        stranger = cast(AbstractIncomingMessage, _Delivery(1, []))  # same tag, delivered on an earlier channel
        assert window.owns(d[0]) and not window.owns(stranger)
        window.settled(stranger)
        assert window.owns(d[0])
