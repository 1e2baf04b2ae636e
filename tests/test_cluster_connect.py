"""Several broker URLs, multi-host database URLs, failover of connections, and their redaction.

Against the real services: a broker "node" that dies is a TcpProxy in front of
the machine's RabbitMQ being closed; the database's read-only trap is the test
database made read-only and back. The cluster scenarios themselves (real
3-node RabbitMQ, a PostgreSQL primary and standby) are in tests/faults.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import subprocess
import sys
import uuid
from typing import Any

import aio_pika
import asyncpg
import pytest

from runtime.amqp import BrokerSession, NodeOrder, connect_any
from runtime.settings import Settings, SettingsError
from runtime.urls import amqp_urls, database_url, redact_urls, split_urls
from schemas import topology
from tests.faults.checker import callback_body
from tests.support import TcpProxy, eventually
from worker.failures import Fault, classify

DEAD = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1: refused at once


class TestUrlLists:
    def test_several_broker_urls_are_split_where_a_new_url_starts(self):
        raw = "amqp://u:p@a:5781/v, amqps://u:p@b:5782/v?heartbeat=5&name=x,y"
        assert amqp_urls(raw) == ("amqp://u:p@a:5781/v", "amqps://u:p@b:5782/v?heartbeat=5&name=x,y")
        assert amqp_urls("amqp://guest:guest@127.0.0.1:5672/") == ("amqp://guest:guest@127.0.0.1:5672/",)

    @pytest.mark.parametrize("raw", [
        "amqp://h1,h2/v",  # libpq's multi-host form is not the broker's
        "amqp://h1:5781/v,h2:5782/v",  # the second is not a URL: was read as vhost "v,h2:5782/v"
        "amqp://h1/v,",
        "http://h1/",
        "amqp://h1:99999/",
        "amqp:///v",
    ])
    def test_a_list_that_is_not_one_of_urls_is_refused(self, raw):
        with pytest.raises(SettingsError, match="FLOWSCRIBE_AMQP_URL"):
            Settings.from_env({"FLOWSCRIBE_AMQP_URL": raw})

    def test_a_refused_setting_does_not_show_its_password(self):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"FLOWSCRIBE_AMQP_URL": "amqp://u:hunter2@h1:5781/v,h2:1/v"})
        assert "hunter2" not in str(refused.value)

    def test_the_process_refuses_to_start_with_exit_2(self):
        env = {"FLOWSCRIBE_AMQP_URL": "amqp://u:hunter2@h1:5781/v,h2:5782/v", "PATH": "/usr/bin:/bin"}
        for command in ("worker", "gateway", "migrate"):
            done = subprocess.run([sys.executable, "-m", "flowscribe_ingest.cli", command],
                                  env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, done.stderr
            assert "FLOWSCRIBE_AMQP_URL" in done.stderr and "hunter2" not in done.stderr

    def test_multi_host_database_url_targets_the_primary(self):
        url = "postgresql://u@h1:5432,h2:5433/flowscribe"
        assert database_url(url) == url + "?target_session_attrs=read-write"
        given = url + "?target_session_attrs=primary"
        assert database_url(given) == given  # the user's choice stands
        assert database_url("postgresql://u@h1/db") == "postgresql://u@h1/db"  # one host: as it was
        assert split_urls(url) == [url]  # its commas are not a list of URLs
        with pytest.raises(SettingsError, match="FLOWSCRIBE_DATABASE_URL"):
            Settings.from_env({"FLOWSCRIBE_DATABASE_URL": "postgresql://u@h1:x,h2/db"})

    def test_every_url_of_every_list_is_redacted(self):
        raw = ("amqp://u:s3cr3t-a@a:5781/v?name=w@host,"
               "amqp://u:s3cr3t-b@b:5782/v")
        database = "postgresql://u:s3cr3t-c@h1:5432,h2:5432/db?password=s3cr3t-d&sslpassword=s3cr3t-e"
        shown = redact_urls(raw)
        assert shown == "amqp://u:***@a:5781/v?name=w@host,amqp://u:***@b:5782/v"
        assert redact_urls(database) == "postgresql://u:***@h1:5432,h2:5432/db?password=***&sslpassword=***"
        settings = Settings.from_env({"FLOWSCRIBE_AMQP_URL": raw, "FLOWSCRIBE_DATABASE_URL": database})
        public = json.dumps(settings.public())
        assert "s3cr3t" not in public
        assert "a:5781" in public and "b:5782" in public and "h2:5432" in public

    def test_a_password_only_in_the_query_is_redacted(self):
        # Was logged at start in full: only a password in the userinfo was hidden.
        shown = Settings.from_env({"FLOWSCRIBE_DATABASE_URL": "postgresql://u@h/db?password=hunter2"}).public()
        assert "hunter2" not in json.dumps(shown)

    def test_each_process_shuffles_the_nodes_and_goes_round(self):
        urls = [f"amqp://n{i}/" for i in range(3)]
        orders = {tuple(NodeOrder(urls, random.Random(seed)).urls) for seed in range(30)}
        assert len(orders) > 3  # processes spread: not everyone starts on the first node
        order = NodeOrder(urls, random.Random(1))
        assert [order.take() for _ in range(6)] == order.urls * 2


class TestInternalClientErrors:
    def test_connection_state_errors_hold_the_batch_never_dead_letter(self):
        # Seen dead-lettering callbacks in flight at a PostgreSQL failover (stage `database`).
        error = asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")
        assert classify(error) is Fault.UNAVAILABLE
        assert classify(asyncpg.exceptions.TargetServerAttributeNotMatched("no primary")) is Fault.UNAVAILABLE
        assert classify(asyncpg.ReadOnlySQLTransactionError("read-only")) is Fault.UNAVAILABLE

    def test_a_value_the_client_cannot_encode_is_the_message_fault(self):
        assert classify(asyncpg.exceptions.DataError("invalid input for query argument $1")) is Fault.DATA


class TestBrokerFailover:
    async def test_a_dead_node_in_the_list_is_skipped(self, amqp_url):
        urls = f"{DEAD},{amqp_url}"
        async with BrokerSession(urls, "test", declare=topology.declare, rng=random.Random(0)) as session:
            await session.wait_ready(10)
            assert session.url is not None and ":1/" not in session.url
        connection = await connect_any(f"{DEAD},{DEAD},{amqp_url}", "test", timeout=5)
        await connection.close()
        with pytest.raises(OSError):
            await connect_any(f"{DEAD},{DEAD}", "test", timeout=5)

    async def test_a_set_up_that_hangs_is_given_up_for_the_next_attempt(self, amqp_url):
        """A declare left unanswered (as on a node whose queue just lost its leader) does not
        keep the session from the broker: the set-up has a deadline, and the next attempt works."""
        attempts = 0

        async def declare(channel):
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                await asyncio.Event().wait()  # never answered
            return await topology.declare(channel)

        async with BrokerSession(amqp_url, "test", declare=declare, setup_timeout=1.0) as session:
            await session.wait_ready(10)
        assert attempts == 2

    async def test_a_session_closed_while_it_connects_closes_at_once(self, amqp_url):
        # Closed at every moment of its first 30 ms (connecting, opening the channel, declaring):
        # a cancellation lost in aio-pika's connect, or a close of a half-opened connection,
        # left 13 of 300 such closes hanging for good (a console test's teardown, in CI).
        for step in range(100):
            session = BrokerSession(amqp_url, "test", declare=topology.declare)
            await session.__aenter__()
            await asyncio.sleep(step * 0.0003)  # the moment of the close, not a wait for work
            closing = asyncio.create_task(session.close())
            done, _ = await asyncio.wait({closing}, timeout=10)
            assert done, f"close {step * 0.3:.1f} ms after opening still waiting after 10 s"

    async def test_a_lost_node_is_followed_by_the_next(self, amqp_url, broker):
        nodes = [TcpProxy("127.0.0.1", 5672) for _ in range(3)]
        for node in nodes:
            await node.open()
        urls = ",".join(node.url(amqp_url) for node in nodes)
        try:
            async with BrokerSession(urls, "test", declare=topology.declare, rng=random.Random(2)) as session:
                for round_ in range(4):
                    await session.wait_ready(10)
                    current = next(n for n in nodes if f":{n.port}/" in (session.url or ""))
                    await current.close()  # the node dies; the two others stay up
                    await eventually(functools.partial(_ready_elsewhere, session, current), timeout=10,
                                     what=f"reconnect to another node ({round_})")
                    await current.open()
                assert session.connects == 5
        finally:
            for node in nodes:
                await node.close()

    async def test_a_late_close_of_the_old_connection_leaves_the_new_one_alone(self, amqp_url, broker):
        """The close callback must belong to its own connection (ruff B023)."""
        link = TcpProxy("127.0.0.1", 5672)
        await link.open()
        try:
            async with BrokerSession(link.url(amqp_url), "test", declare=topology.declare) as session:
                await session.wait_ready(10)
                old = session._connection
                assert old is not None
                listeners: list[Any] = list(old.close_callbacks)
                link.reset()
                await eventually(lambda: _ready_again(session), timeout=10, what="reconnect")
                new = session._connection
                for listener in listeners:  # the old connection's close, reported late
                    listener(old, ConnectionResetError("late close of the old connection"))
                # A round trip on the new channel: the session task has run in the meantime.
                channel, declared = session.usable()
                await channel.declare_queue(declared.callback_queue.name, passive=True)
                assert session.ready and session._connection is new and session.connects == 2
        finally:
            await link.close()


async def _ready_elsewhere(session: BrokerSession, dead: TcpProxy) -> bool:
    return session.ready and f":{dead.port}/" not in (session.url or "")


async def _ready_again(session: BrokerSession) -> bool:
    return session.ready and session.connects == 2


class TestReadOnlyDatabase:
    async def test_a_read_only_connection_is_dropped_and_the_batch_lands(
        self, settings, db, broker, start_worker, caplog
    ):
        """The trap after a switchover: pooled connections to a server now read-only stay read-only.

        New sessions of the test database start read-only here; a worker that
        kept those connections would hold its batch forever once the database
        is writable again (as one that kept connections to an old primary does).
        """
        name = settings.database_url.rsplit("/", 1)[1]
        await db.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        try:
            worker = start_worker(database_retry_max_delay=0.5)
            analysis_id = uuid.uuid4()
            # On a connection of its own: a channel that published to the callbacks queue stays
            # its "enqueuer", and RabbitMQ 3.10 keeps nacking such a channel's publishes after a
            # later test's max-length policy on that queue is cleared.
            async with await aio_pika.connect(settings.amqp_url) as connection:
                channel = await connection.channel()
                await channel.default_exchange.publish(
                    aio_pika.Message(callback_body(analysis_id), message_id=str(uuid.uuid4()),
                                     content_type="application/json",
                                     headers={topology.HEADER_RECEIVED_AT: "2026-01-01T00:00:00+00:00"}),
                    routing_key=topology.CALLBACK_QUEUE)
            await eventually(lambda: _logged(caplog, "database unavailable: holding batch", "ReadOnly"),
                             timeout=20, what="the worker to hold its batch")
        finally:
            await db.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await eventually(lambda: _stored(db, analysis_id), timeout=20, what="the batch to land")
        stopped = await worker.stop()
        assert stopped.outcomes["dead_lettered"] == 0 and stopped.outcomes["ingested"] == 1
        dead = await broker.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
        assert dead.declaration_result.message_count == 0


async def _logged(caplog: pytest.LogCaptureFixture, message: str, reason: str) -> bool:
    return any(r.getMessage() == message and reason in str(getattr(r, "reason", "")) for r in caplog.records)


async def _stored(db: asyncpg.Pool, analysis_id: uuid.UUID) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM flowscribe.analyses WHERE id = $1", analysis_id))


class TestRenewal:
    async def test_a_renewed_session_makes_a_new_connection(self, amqp_url):
        session = BrokerSession(amqp_url, "test", declare=topology.declare)
        assert not session.renew("not connected yet"), "nothing to renew before the first connection"
        async with session:
            await session.wait_ready(10)
            old = session._connection
            assert session.up_for() >= 0.0
            assert session.renew("the broker keeps refusing this channel")
            await eventually(lambda: _ready_again(session), timeout=10, what="a new connection")
            assert session._connection is not old and old is not None and old.is_closed

    async def test_a_hold_refused_on_a_connection_that_is_up_trades_it_for_a_new_one(self, amqp_url, monkeypatch):
        """Publishes nacked on an open channel for RENEW_AFTER (a quorum queue's leader died and
        the channel never learns of the new one): the hold asks for a new connection, once."""
        from gateway import publish_hold
        from gateway.metrics import GatewayMetrics
        from gateway.publisher import PublishFailed

        monkeypatch.setattr(publish_hold, "RENEW_AFTER", 0.3)
        async with BrokerSession(amqp_url, "test", declare=topology.declare) as session:
            await session.wait_ready(10)

            async def refused_until_renewed(broker, message, timeout):
                if broker.connects < 2:
                    raise PublishFailed("DeliveryError: Basic.Nack")

            metrics = GatewayMetrics()
            hold = publish_hold.PublishHold(refused_until_renewed, hold_seconds=10, attempt_timeout=1,
                                            metrics=metrics)
            await hold.publish(session, aio_pika.Message(b"{}"))
            assert session.connects == 2
            assert metrics.broker_renewals._value.get() == 1
