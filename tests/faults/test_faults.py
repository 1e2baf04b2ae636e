"""The fault suite: every callback the gateway answered 2xx ends up stored exactly once
(or, if poison, dead-lettered with its reason), whatever crashes or restarts on the way.

Each scenario prints its figures (see checker.Verdict) and passes only with
lost 0, unexpected 0, duplicated 0 and empty queues.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal

import aio_pika
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from schemas import topology
from tests.conftest import RunningWorker
from tests.faults.checker import ALL_QUEUES, REPORT, History, check, send_callbacks, wait_until_accounted
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
            send_callbacks(http, callback_url(server), 1200, concurrency=8, request_timeout=5.0, rate=60))
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
        settle(verdict, f"{', '.join(faults)}; answers {dict(history.statuses)}")


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


class TestServerRestarts:
    """RabbitMQ and PostgreSQL restarting under load: everyone reconnects by themselves."""

    @pytest.mark.timeout(300)
    async def test_rabbitmq_restart_during_a_gateway_load_run(self, settings, http, db, private_rabbitmq):
        broker_url = private_rabbitmq.url
        connection, _ = await _fresh_broker_state(broker_url)
        await connection.close()
        running = dataclasses.replace(settings, amqp_url=broker_url, publish_timeout=2.0)
        server = TestServer(create_app(running))
        await server.start_server()
        workers = [RunningWorker(running) for _ in range(2)]
        history = History()
        sending = asyncio.create_task(send_callbacks(
            http, callback_url(server), 1500, concurrency=8, request_timeout=5.0, retry_for=90.0,
            history=history, rate=300))
        try:
            await asyncio.sleep(1.5)  # fault cadence: let the run get going
            history.mark("restart begins")
            await asyncio.to_thread(private_rabbitmq.restart)
            history.mark("broker back")
            await sending
            # However fast the first wave was, a second one measures how soon 202s come back.
            await send_callbacks(http, callback_url(server), 100, concurrency=4, seed=8, history=history)
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
        back = history.recovery("broker back")
        settle(verdict, f"RabbitMQ restart: 202 again {back:.1f}s after the broker was back,"
                        f" slowest refusal {history.slowest_refusal:.1f}s, answers {dict(history.statuses)}")
        assert back is not None and back < 10, "the gateway should accept again within seconds"
        assert history.slowest_refusal < 6, "a broker outage must give quick 503s, not hangs"

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
