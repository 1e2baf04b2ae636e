"""The fault suite: every callback the gateway answered 2xx ends up stored exactly once
(or, if poison, dead-lettered with its reason), whatever crashes or restarts on the way.

Each scenario prints its figures (see checker.Verdict) and passes only with
lost 0, unexpected 0, duplicated 0 and empty queues.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import random
import signal
import time
import uuid

import aio_pika
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import BROKER, BUDGET, create_app
from schemas import topology
from schemas.message import callback_message
from tests.conftest import RunningWorker
from tests.faults.checker import (
    ALL_QUEUES,
    REPORT,
    History,
    callback_body,
    check,
    send_callbacks,
    wait_until_accounted,
)
from tests.support import TOKEN, CliProcess, TcpProxy, eventually, service_env
from worker.consumer import Worker

pytestmark = pytest.mark.faults


def callback_url(server: TestServer) -> str:
    return str(server.make_url(f"/flowscribe/callback/{TOKEN}"))


def settle(verdict, scenario: str) -> None:
    line = verdict.line(scenario)
    REPORT.append(line)
    print(line)
    assert verdict.passed, line


async def worker_process(settings) -> CliProcess:
    """A real `flowscribe-ingest worker` process, to be killed without mercy."""
    return await CliProcess.start("worker", service_env(settings, FLOWSCRIBE_LOG_LEVEL="warning"))


async def kill_9(worker: CliProcess) -> None:
    worker.send_signal(signal.SIGKILL)
    await worker.process.wait()


class TestWorkerCrashes:
    """kill -9 and crashes between commit and ack lose and double nothing."""

    async def test_kill_9_a_worker_every_two_seconds(self, settings, gateway, http, db, broker):
        workers = [await worker_process(settings) for _ in range(3)]
        kills = 0
        sending = asyncio.create_task(send_callbacks(http, callback_url(gateway), 2000, concurrency=16, rate=300))
        rng = random.Random(1)
        try:
            while not sending.done():
                await asyncio.wait({sending}, timeout=2.0)
                victim = rng.randrange(len(workers))
                await kill_9(workers[victim])
                kills += 1
                workers[victim] = await worker_process(settings)
            history = await sending
            # Keep killing while the backlog drains, for a few more rounds.
            for _ in range(3):
                await asyncio.sleep(2.0)  # the fault cadence itself, not a wait for work
                victim = rng.randrange(len(workers))
                await kill_9(workers[victim])
                kills += 1
                workers[victim] = await worker_process(settings)
            await wait_until_accounted(history, db, broker)
            # Stop only once every worker is up (a process killed while starting holds nothing,
            # but one signalled before it installed its handlers would not exit cleanly).
            await eventually(lambda: _consumers(broker, len(workers)), what="all workers consuming")
        finally:
            codes = [await w.stop() for w in workers]
        assert codes == [0, 0, 0]
        settle(await check(history, db, broker), f"kill -9 x{kills} with 3 workers")

    async def test_crash_between_commit_and_ack(self, settings, gateway, http, db, broker, start_worker, monkeypatch):
        """The worker's broker link dies right after a commit, before the acks, over and over."""
        link = TcpProxy("127.0.0.1", 5672)
        await link.open()
        crashes = 0
        real_ack = Worker._ack_all
        rng = random.Random(5)

        async def ack_or_crash(self, committed):
            nonlocal crashes
            if rng.random() < 0.3:  # of committed batches
                crashes += 1
                link.reset()  # as the broker sees a crash: the connection drops, unacked messages return
            await real_ack(self, committed)

        monkeypatch.setattr(Worker, "_ack_all", ack_or_crash)
        try:
            workers = [start_worker(batch_size=20, amqp_url=link.url(settings.amqp_url)) for _ in range(2)]
            history = await send_callbacks(http, callback_url(gateway), 600, concurrency=8)
            await wait_until_accounted(history, db, broker)
        finally:
            monkeypatch.setattr(Worker, "_ack_all", real_ack)
        # Crashes over: the last redeliveries drain, then the workers stop cleanly.
        await wait_until_accounted(history, db, broker)
        for worker in workers:
            await worker.stop()
        await link.close()
        assert crashes > 5
        verdict = await check(history, db, broker)
        assert await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == verdict.stored
        settle(verdict, f"crash between commit and ack x{crashes}")


class TestDuplicates:
    """The vendor posting the same callback several times at once stores it once."""

    async def test_same_callback_posted_concurrently(self, settings, gateway, http, db, broker, start_worker):
        workers = [start_worker(batch_size=10) for _ in range(3)]
        history = await send_callbacks(http, callback_url(gateway), 150, concurrency=8, copies=4)
        await wait_until_accounted(history, db, broker)
        for worker in workers:
            await worker.stop()
        outcomes = dict(await db.fetch("SELECT outcome, count(*) FROM flowscribe.callbacks GROUP BY 1"))
        verdict = await check(history, db, broker)
        settle(verdict, "same callback posted 4x concurrently")
        assert outcomes == {"ingested": 150, "duplicate": 450}
        # The vendor's sample repeats each item's ID: every analysis has one row per distinct item.
        assert await db.fetchval("SELECT count(*) FROM flowscribe.sentences") == 150


    async def test_a_message_published_again_lands_once(self, settings, http, db, broker, start_worker):
        """A held publish whose first confirm was lost reached the queue twice: same message id,
        same receive time. Stored once, one ledger row, whichever copy the worker sees first."""
        ids = [uuid.uuid4() for _ in range(50)]
        exchange = await broker.get_exchange(topology.CALLBACK_EXCHANGE)
        received_at = datetime.datetime.now(datetime.UTC)
        history = History()
        for analysis_id in ids:
            message_id = str(uuid.uuid4())
            for _ in range(2):  # the copy the confirm was lost for, and the one published again
                await exchange.publish(
                    callback_message(callback_body(analysis_id), "application/json", message_id=message_id,
                                     received_at=received_at),
                    routing_key=topology.CALLBACK_ROUTING_KEY)
            history.results[analysis_id] = "ok"
        worker = start_worker(batch_size=10)
        await wait_until_accounted(history, db, broker)
        await worker.stop()
        verdict = await check(history, db, broker)
        settle(verdict, "every message published twice with its id")
        assert await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == len(ids)
        assert dict(await db.fetch("SELECT outcome, count(*) FROM flowscribe.callbacks GROUP BY 1")) == {
            "ingested": len(ids)}


class TestPoisonMix:
    """1 % poison in a run: the dead-letter queue holds exactly those, each with its reason."""

    async def test_one_percent_poison(self, settings, gateway, http, db, broker, start_worker):
        worker = start_worker()
        history = await send_callbacks(http, callback_url(gateway), 1500, concurrency=16, poison_rate=0.01, seed=11)
        assert len(history.poison) >= 5
        await wait_until_accounted(history, db, broker)
        await worker.stop()
        verdict = await check(history, db, broker)
        settle(verdict, "1% poison")
        assert verdict.poison_dead_lettered == len(history.poison)
        assert verdict.dead_lettered == len(history.poison)


class TestLinkCuts:
    """Cut, restore and black-hole the gateway-broker and worker-broker links mid-run."""

    async def test_cut_and_black_hole_links(self, settings, http, db, broker, start_worker):
        gateway_link = TcpProxy("127.0.0.1", 5672)
        worker_link = TcpProxy("127.0.0.1", 5672)
        await gateway_link.open()
        await worker_link.open()
        # Short heartbeats so a black hole is noticed in seconds (the default is 10 s).
        gateway_settings = dataclasses.replace(
            settings, amqp_url=gateway_link.url(settings.amqp_url) + "?heartbeat=2", publish_timeout=2.0)
        server = TestServer(create_app(gateway_settings))
        await server.start_server()
        worker = start_worker(amqp_url=worker_link.url(settings.amqp_url) + "?heartbeat=2")
        sending = asyncio.create_task(
            send_callbacks(http, callback_url(server), 1200, concurrency=8, request_timeout=100.0, rate=60))
        faults = []
        try:
            for step in range(4):
                await asyncio.sleep(1.5)  # fault cadence
                link = (gateway_link, worker_link)[step % 2]
                name = ("gateway", "worker")[step % 2]
                if step < 2:
                    await link.close()
                    faults.append(f"cut {name}")
                    await asyncio.sleep(1.0)  # outage length
                    await link.open()
                else:
                    link.freeze()
                    faults.append(f"black-hole {name}")
                    await asyncio.sleep(6.0)  # long enough for heartbeats to notice
                    link.thaw()
            history = await sending
            await wait_until_accounted(history, db, broker)
            await worker.stop()
        finally:
            await server.close()
            await gateway_link.close()
            await worker_link.close()
        verdict = await check(history, db, broker)
        settle(verdict, f"{', '.join(faults)}; refusals {history.refusals}, longest wait for a 202"
                        f" {history.slowest_ok:.1f}s, answers {dict(history.statuses)}")
        # The gateway holds what the cut links leave unconfirmed; the sender waits as HttpClient does.
        assert history.refusals == 0, "links cut and restored within the hold must refuse nothing"


async def _consumers(broker, n: int) -> bool:
    queue = await broker.declare_queue(topology.CALLBACK_QUEUE, passive=True)
    return queue.declaration_result.consumer_count == n


async def _fresh_broker_state(url: str) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await topology.declare(channel)
    for name in (*ALL_QUEUES, topology.DEAD_LETTER_QUEUE):
        await (await channel.get_queue(name)).purge()
    return connection, channel


class BrokerAbsence:
    """Samples a gateway's broker session while a block runs: the longest time it was without one."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            self.longest = max(self.longest, self.server.app[BROKER].down_for())
            await asyncio.sleep(0.05)  # the sampling period

    async def __aenter__(self) -> BrokerAbsence:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class TestServerRestarts:
    """RabbitMQ and PostgreSQL restarting under load: everyone reconnects by themselves."""

    @pytest.mark.timeout(300)
    async def test_rabbitmq_restart_during_a_gateway_load_run(self, settings, http, db, private_rabbitmq):
        """A restart shorter than the hold (`make run`'s single broker): no callback refused."""
        broker_url = private_rabbitmq.url
        connection, _ = await _fresh_broker_state(broker_url)
        await connection.close()
        running = dataclasses.replace(settings, amqp_url=broker_url, publish_timeout=2.0, publish_hold_seconds=30.0)
        server = TestServer(create_app(running))
        await server.start_server()
        workers = [RunningWorker(running) for _ in range(2)]
        history = History()
        done = asyncio.Event()
        # The sender waits longer than the hold, as .NET's HttpClient (100 s) does.
        sending = asyncio.create_task(send_callbacks(
            http, callback_url(server), 100_000, concurrency=8, request_timeout=45.0, retry_for=90.0,
            history=history, rate=100, until=done))
        try:
            async with BrokerAbsence(server) as absence:
                await asyncio.sleep(1.5)  # fault cadence: let the run get going
                await asyncio.to_thread(private_rabbitmq.restart)
                await asyncio.sleep(1.0)  # the load goes on after the restart
            done.set()
            await sending
            connection = await aio_pika.connect(broker_url)
            channel = await connection.channel()
            await wait_until_accounted(history, db, channel)
            for worker in workers:
                await worker.stop()
            verdict = await check(history, db, channel)
            await connection.close()
        finally:
            await server.close()
            await asyncio.to_thread(private_rabbitmq.start)
        hold = running.publish_hold_seconds
        settle(verdict, f"RabbitMQ restart (broker away {absence.longest:.1f}s, hold {hold:.0f}s):"
                        f" refusals {history.refusals}, longest wait for a 202 {history.slowest_ok:.1f}s,"
                        f" answers {dict(history.statuses)}")
        assert absence.longest > 0, "the gateway never lost its broker: the scenario proves nothing"
        assert history.refusals == 0, "a broker restart shorter than the hold must refuse nothing"

    @pytest.mark.timeout(300)
    async def test_rabbitmq_down_longer_than_the_hold(self, settings, http, db, private_rabbitmq):
        """503s once the hold expires, memory within the byte budget, 202s within a second of the return."""
        broker_url = private_rabbitmq.url
        connection, _ = await _fresh_broker_state(broker_url)
        await connection.close()
        budget = 24 * 1024  # a few dozen small callbacks: the load fills it while they are held
        running = dataclasses.replace(settings, amqp_url=broker_url, publish_timeout=2.0, publish_hold_seconds=2.0,
                                      max_inflight_bytes=budget)
        server = TestServer(create_app(running))
        await server.start_server()
        history = History()
        done = asyncio.Event()
        sending = asyncio.create_task(send_callbacks(
            http, callback_url(server), 100_000, concurrency=32, request_timeout=45.0, retry_for=90.0,
            history=history, rate=200, until=done))
        try:
            await asyncio.sleep(1.0)  # fault cadence
            await asyncio.to_thread(private_rabbitmq.stop)
            await asyncio.sleep(running.publish_hold_seconds * 2)  # the outage outlasts the hold
            await asyncio.to_thread(private_rabbitmq.start)
            back = time.monotonic()

            async def accepted() -> float | None:
                analysis_id = uuid.uuid4()  # accounted for like the load's own
                async with http.post(callback_url(server), data=callback_body(analysis_id),
                                     headers={"Content-Type": "application/json"}) as r:
                    history.results[analysis_id] = "ok" if r.status == 202 else "unknown"
                    return time.monotonic() if r.status == 202 else None
            first_202 = await eventually(accepted, what="a 202 once the broker is back") - back
            done.set()
            await sending
            workers = [RunningWorker(running)]
            connection = await aio_pika.connect(broker_url)
            channel = await connection.channel()
            await wait_until_accounted(history, db, channel)
            for worker in workers:
                await worker.stop()
            verdict = await check(history, db, channel)
            await connection.close()
            peak = server.app[BUDGET].peak
        finally:
            await server.close()
            await asyncio.to_thread(private_rabbitmq.start)
        hold = running.publish_hold_seconds
        settle(verdict, f"RabbitMQ down {hold * 2:.0f}s, hold {hold:.0f}s:"
                        f" refusals {history.refusals}, first 202 {first_202:.2f}s after the broker was back,"
                        f" peak in-flight {peak} of {budget} bytes, answers {dict(history.statuses)}")
        assert history.statuses["503"] > 0, "an outage longer than the hold is refused, as before"
        assert peak <= budget
        assert first_202 < 1.0, "the gateway should accept again within a second of the broker's return"

    @pytest.mark.timeout(300)
    async def test_postgresql_restart_during_a_run(self, settings, gateway, http, broker, private_postgres):
        from store.migrations import migrate

        database_url = private_postgres.url.rsplit("/", 1)[0] + "/flowscribe_faults"
        await migrate(database_url)
        async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as private_db:
            await private_db.execute("TRUNCATE flowscribe.callbacks, flowscribe.jobs, flowscribe.analyses,"
                                     " flowscribe.sentences, flowscribe.conversation_summaries")
            running = dataclasses.replace(settings, database_url=database_url, database_retry_max_delay=1.0)
            workers = [RunningWorker(running) for _ in range(2)]
            sending = asyncio.create_task(send_callbacks(http, callback_url(gateway), 1500, concurrency=8))
            await asyncio.sleep(1.0)  # fault cadence
            await asyncio.to_thread(private_postgres.stop, "immediate")  # a crash, not a polite shutdown
            await asyncio.sleep(2.0)  # outage length
            await asyncio.to_thread(private_postgres.start)
            history = await sending
        async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as private_db:
            await wait_until_accounted(history, private_db, broker)
            for worker in workers:
                await worker.stop()
            verdict = await check(history, private_db, broker)
        settle(verdict, "PostgreSQL crash and restart under load")
