"""The fault suite on clusters: a 3-node RabbitMQ cluster and a PostgreSQL primary with a standby.

Gateways and workers are given every node (the multi-URL settings), a
retrying sender posts a steady load through two gateways, a node dies (or
restarts, or is cut off), and the checker accounts for every callback as in
test_faults. The cluster survives each of these faults, so each must also end
with no callback refused (the gateways hold publishes meanwhile, see
gateway.publish_hold); besides the verdict each scenario reports the refusals,
the longest any callback waited for its 202, and the longest time without a 202
and without a commit from the fault on.

One cluster and one database pair serve every scenario (module fixtures);
each scenario leaves them whole again for the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import aio_pika
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import BROKER, create_app
from runtime.amqp import connect_any
from schemas import topology
from store.migrations import migrate
from tests.conftest import SIDE_TABLES, TABLES, RunningWorker
from tests.faults.checker import (
    ALL_QUEUES,
    REPORT,
    CommitWatch,
    History,
    callback_body,
    check,
    send_callbacks,
    wait_until_accounted,
)
from tests.faults.servers import (
    QUORUM_QUEUE_KILL_WINDOW,
    PrivatePostgresPair,
    PrivateRabbitMQ,
    PrivateRabbitMQCluster,
)
from tests.support import TOKEN, eventually

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

RATE = 80  # callbacks/s: steady, and light enough for this shared 2-core machine
# After moving a queue's leader, before killing it: a leader killed within a second of its
# election left the queue leaderless for ~30 s here (Ra's followers wait out their election
# timeout), which is not the failure the scenario is about.
LEADER_SETTLE = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQCluster]:
    servers = PrivateRabbitMQCluster(tmp_path_factory.mktemp("rabbitmq-cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module")
def pg_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgresPair]:
    pair = PrivatePostgresPair(tmp_path_factory.mktemp("postgres-pair"))
    try:
        pair.start(synchronous=True)
        yield pair
    finally:
        pair.close()


@pytest.fixture
async def cluster_channel(cluster: PrivateRabbitMQCluster) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the cluster, topology declared, queues empty."""
    connection = await connect_any(cluster.urls, "checker", timeout=10)
    channel = await connection.channel()
    await topology.declare(channel)
    for name in (*ALL_QUEUES, topology.DEAD_LETTER_QUEUE):
        await (await channel.get_queue(name)).purge()
    await asyncio.sleep(QUORUM_QUEUE_KILL_WINDOW)  # see servers.QUORUM_QUEUE_KILL_WINDOW
    try:
        yield channel
    finally:
        await connection.close()


class Stack:
    """Two gateways and three workers, every one of them given all the nodes."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.gateways = [TestServer(create_app(settings)) for _ in range(2)]
        self.workers: list[RunningWorker] = []

    @property
    def urls(self) -> list[str]:
        return [str(g.make_url(f"/flowscribe/callback/{TOKEN}")) for g in self.gateways]

    async def __aenter__(self) -> Stack:
        for gateway in self.gateways:
            await gateway.start_server()
        self.workers = [RunningWorker(self.settings) for _ in range(3)]
        return self

    async def stop_workers(self) -> None:
        for worker in self.workers:
            await worker.stop(timeout=60)

    async def __aexit__(self, *exc_info: object) -> None:
        for worker in self.workers:
            worker.stop_event.set()
        await asyncio.gather(*(asyncio.wait_for(w.task, 60) for w in self.workers), return_exceptions=True)
        for gateway in self.gateways:
            await gateway.close()


def report(scenario: str, verdict, history: History, commits: CommitWatch, fault: str, *, must_pass: bool = True,
           extra: dict | None = None, refuse_nothing: bool = False) -> None:
    figures = {
        "refusals": history.refusals,
        "longest_wait_for_202_s": round(history.slowest_ok, 2),
        "no_202_for_s": history.longest_gap(fault),
        "no_commit_for_s": commits.longest_stall(history.marks.get(fault)),
        "answers": dict(history.statuses),
        **(extra or {}),
    }
    line = verdict.line(scenario) + " " + json.dumps(figures)
    REPORT.append(line)
    print(line)
    if must_pass:
        assert verdict.passed, line
    if refuse_nothing:
        assert history.refusals == 0, f"the cluster survived, yet callbacks were refused: {line}"


Fault = Callable[[Stack], dict | None]


async def _run_broker_fault(settings, http, db, cluster, _channel, fault: Fault, scenario: str, *,
                            seconds: float = 6.0, extra=None) -> None:
    """A steady load through the stack on the cluster; ``fault`` (blocking, run in a thread) mid-way.

    The cluster survives every fault here, so no callback may be refused: the
    gateways hold what the broker does not confirm meanwhile (the default hold),
    and the sender waits for an answer as long as .NET's HttpClient would.
    """
    running = dataclasses.replace(settings, amqp_url=cluster.urls, publish_timeout=2.0)
    history = History()
    done = asyncio.Event()
    async with Stack(running) as stack, CommitWatch(db) as commits:
        await _all_connected(stack)
        sending = asyncio.create_task(send_callbacks(
            http, stack.urls, 100_000, concurrency=8, rate=RATE, request_timeout=100.0, retry_for=120.0,
            history=history, until=done))
        await asyncio.sleep(2.0)  # fault cadence: the load is flowing
        history.mark("fault")
        details = await asyncio.to_thread(fault, stack)
        await asyncio.sleep(seconds)  # the load goes on after the fault, to show it flows again
        done.set()
        await sending
        # The fixture's channel may have been on the node that died: a fresh one for the accounting.
        async with await connect_any(cluster.urls, "checker", timeout=10) as connection:
            channel = await connection.channel()
            await wait_until_accounted(history, db, channel)
            await stack.stop_workers()
            verdict = await check(history, db, channel)
    report(scenario, verdict, history, commits, "fault", extra={**(details or {}), **(extra or {})},
           refuse_nothing=True)


async def _all_connected(stack: Stack) -> None:
    async def connected() -> bool:
        return all(gateway.app[BROKER].ready for gateway in stack.gateways)
    await eventually(connected, what="the gateways to connect")


def _gateway_node(cluster: PrivateRabbitMQCluster, stack: Stack) -> PrivateRabbitMQ:
    """The node the first gateway is connected to."""
    url = stack.gateways[0].app[BROKER].url
    assert url is not None, "the gateway is not connected"
    port = urllib.parse.urlsplit(url).port
    return next(node for node in cluster.nodes if node.port == port)


def _busiest(cluster: PrivateRabbitMQCluster) -> tuple[PrivateRabbitMQ, dict[str, int]]:
    counts = cluster.connections_per_node()
    return cluster.node(max(counts, key=counts.__getitem__)), counts


class TestRabbitMQCluster:
    """In this order: the worst kill on the fresh cluster, then the faults the cluster heals by
    itself, then the kills; the last kill needs no restore."""

    async def test_kill_9_the_node_of_both_gateway_and_leader(self, settings, http, db, cluster, cluster_channel):
        """First, on the fresh cluster: the worst case measured outside, the gateway's connection and
        the queue's leader gone at once. (Run after the other kills, whose nodes were restarted, the
        queue was twice left without a leader for minutes on this machine: see the closing note.)"""
        def fault(stack: Stack) -> dict:
            victim = _gateway_node(cluster, stack)
            cluster.move_leader(topology.CALLBACK_QUEUE, victim.nodename)
            time.sleep(LEADER_SETTLE)
            victim.kill()
            return {"killed": "the node of the gateway and the leader"}

        try:
            await _run_broker_fault(settings, http, db, cluster, cluster_channel, fault,
                                    "cluster: kill -9 the node of both the gateway and the queue's leader",
                                    seconds=4.0)
        finally:
            await asyncio.to_thread(_restore, cluster)

    async def test_one_node_partitioned_then_healed(self, settings, http, db, cluster, cluster_channel):
        cut_for = 6.0

        def fault(stack: Stack) -> dict:
            victim, counts = _busiest(cluster)
            cluster.partition(victim, cut_for)
            return {"partitioned_s": cut_for, "connections_per_node": sorted(counts.values(), reverse=True)}

        try:
            await _run_broker_fault(settings, http, db, cluster, cluster_channel, fault,
                                    "cluster: busiest node partitioned, healed", seconds=cut_for + 2)
        finally:
            await asyncio.to_thread(cluster.wait_until_clustered)

    async def test_rolling_restart(self, settings, http, db, cluster, cluster_channel):
        """Each node restarted in turn, its Erlang VM too (``rabbitmqctl stop``, then start), as an
        upgrade or a host's reboot does: every connection to it closed, its queue member gone and back."""
        def fault(stack: Stack) -> dict:
            took = []
            for node in cluster.nodes:
                began = time.monotonic()
                node.restart()
                cluster.wait_until_clustered()
                took.append(round(time.monotonic() - began, 1))
            return {"restart_s": took}

        await _run_broker_fault(settings, http, db, cluster, cluster_channel, fault,
                                "cluster: rolling restart of 3 nodes (Erlang VMs)", seconds=2.0)

    async def test_kill_9_the_callbacks_queue_leader(self, settings, http, db, cluster, cluster_channel):
        # The broker's default gave the queue a member on every node (nothing in our arguments asks for it).
        members = await asyncio.to_thread(cluster.quorum_status, topology.CALLBACK_QUEUE)
        assert set(members) == {node.nodename for node in cluster.nodes}, members

        def fault(stack: Stack) -> dict:
            leader = cluster.queue_leader(topology.CALLBACK_QUEUE)
            cluster.node(leader).kill()
            return {"queue_members": len(members), "killed": "leader"}

        try:
            await _run_broker_fault(settings, http, db, cluster, cluster_channel, fault,
                                    "cluster: kill -9 the callbacks queue's leader", seconds=4.0)
        finally:
            await asyncio.to_thread(_restore, cluster)

    async def test_kill_9_the_gateways_node(self, settings, http, db, cluster, cluster_channel):
        """Last: the dead node stays dead (the module's cluster is thrown away next). The node a
        gateway publishes through dies; the queue's leader is elsewhere."""
        def fault(stack: Stack) -> dict:
            victim = _gateway_node(cluster, stack)
            other = next(node for node in cluster.nodes if node is not victim)
            cluster.move_leader(topology.CALLBACK_QUEUE, other.nodename)
            time.sleep(LEADER_SETTLE)
            victim.kill()
            return {"killed": "the gateway's node, not the leader's"}

        await _run_broker_fault(settings, http, db, cluster, cluster_channel, fault,
                                "cluster: kill -9 the gateway's node", seconds=4.0)

def _restore(cluster: PrivateRabbitMQCluster) -> None:
    for node in cluster.nodes:
        node.start()  # rejoins the cluster: it is a member
    cluster.wait_until_clustered()


def versioned_body(analysis_id: uuid.UUID, version: str) -> bytes:
    body = json.loads(callback_body(analysis_id))
    body["ConversationAnalysisModel"]["ConversationText"] = version
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
async def pair_database(pg_pair: PrivatePostgresPair) -> str:
    url = pg_pair.url("flowscribe_faults")
    await migrate(url)
    return url


@pytest.fixture
async def pair_db(pair_database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(pair_database, min_size=1, max_size=2) as pool:
        await pool.execute("TRUNCATE " + ", ".join(f"flowscribe.{t}" for t in (*TABLES, *SIDE_TABLES)))
        yield pool


class TestPostgresFailover:
    @pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
    async def test_kill_9_the_primary_and_promote(self, settings, gateway, http, broker, pg_pair, pair_database,
                                                  pair_db, synchronous):
        """Workers carry on on the promoted standby; versions converge across the failover.

        Asynchronous replication is reported, not required to pass: a commit the
        dead primary acknowledged but never shipped is gone, and so is its callback.
        """
        if not synchronous:
            await asyncio.to_thread(pg_pair.set_synchronous, False)
        running = dataclasses.replace(settings, database_url=pair_database, database_retry_max_delay=0.5)
        gateway_url = str(gateway.make_url(f"/flowscribe/callback/{TOKEN}"))
        versioned = [uuid.uuid4() for _ in range(40)]
        history = History()
        done = asyncio.Event()
        workers = [RunningWorker(running) for _ in range(3)]
        try:
            async with CommitWatch(pair_db) as commits:
                # Version 1 of some analyses, then the steady load, then the fault, then version 2.
                await send_callbacks(http, gateway_url, 0, ids=versioned, body=lambda a: versioned_body(a, "v1"),
                                     history=history)
                sending = asyncio.create_task(send_callbacks(
                    http, gateway_url, 100_000, concurrency=8, rate=RATE, history=history, until=done))
                await asyncio.sleep(2.0)  # fault cadence
                history.mark("fault")
                await asyncio.to_thread(pg_pair.failover)
                await send_callbacks(http, gateway_url, 0, ids=versioned, body=lambda a: versioned_body(a, "v2"),
                                     history=history)
                await asyncio.sleep(3.0)  # the load goes on on the new primary
                done.set()
                await sending
                async with asyncpg.create_pool(pair_database, min_size=1, max_size=2) as after:
                    await wait_until_accounted(history, after, broker, timeout=60)
                    for worker in workers:
                        await worker.stop(timeout=60)
                    verdict = await check(history, after, broker, versioned=frozenset(versioned))
                    texts = {r["id"]: r["conversation_text"] for r in await after.fetch(
                        "SELECT id, conversation_text FROM flowscribe.analyses WHERE id = ANY($1::uuid[])", versioned)}
        finally:
            for worker in workers:
                worker.stop_event.set()
            await asyncio.gather(*(asyncio.wait_for(w.task, 60) for w in workers), return_exceptions=True)
            await asyncio.to_thread(pg_pair.rebuild, True)  # whole and synchronous for the next
        converged = sum(1 for a in versioned if texts.get(a) == "v2")
        mode = "synchronous" if synchronous else "asynchronous"
        report(f"PostgreSQL {mode}: kill -9 the primary, promote the standby", verdict, history, commits, "fault",
               must_pass=synchronous, extra={"later_version_stored": f"{converged}/{len(versioned)}"})
        if synchronous:
            assert converged == len(versioned), f"only {converged} analyses hold their later version"

    async def test_synchronous_standby_down_commits_wait(self, settings, gateway, http, broker, pg_pair,
                                                         pair_database, pair_db):
        """With the synchronous standby down commits wait: the worker holds its batch (nothing
        acked, nothing dead-lettered), stops within its shutdown deadline, and everything lands
        once the standby is back."""
        # Small batches: two writes wait in their commits, the next batch waits for a slot.
        running = dataclasses.replace(settings, database_url=pair_database, shutdown_timeout=3.0,
                                      database_retry_max_delay=0.5, batch_size=10, prefetch=60)
        gateway_url = str(gateway.make_url(f"/flowscribe/callback/{TOKEN}"))
        await asyncio.to_thread(pg_pair.standby.stop, "immediate")
        try:
            worker = RunningWorker(running)
            history = await send_callbacks(http, gateway_url, 50, concurrency=4)
            await _until_all_taken(broker)  # the worker has them in hand
            stored_meanwhile = await pair_db.fetchval("SELECT count(*) FROM flowscribe.callbacks")
            began = time.monotonic()
            stopped = await worker.stop(timeout=running.shutdown_timeout + 15)
            stop_took = round(time.monotonic() - began, 1)
        finally:
            await asyncio.to_thread(pg_pair.standby.start)
        assert stored_meanwhile == 0, "no commit can complete without the synchronous standby"
        assert stopped.outcomes["dead_lettered"] == 0 and stopped.outcomes["ingested"] == 0
        worker = RunningWorker(running)
        await wait_until_accounted(history, pair_db, broker, timeout=60)
        await worker.stop()
        verdict = await check(history, pair_db, broker)
        line = verdict.line("PostgreSQL synchronous standby down: commits wait, worker stops, lands later")
        line += " " + json.dumps({"worker_stop_s": stop_took, "shutdown_timeout_s": running.shutdown_timeout})
        REPORT.append(line)
        print(line)
        assert verdict.passed, line


async def _until_all_taken(channel: aio_pika.abc.AbstractChannel, timeout: float = 20.0) -> None:
    """Until no callback is ready in the queue: a worker holds them all."""
    deadline = time.monotonic() + timeout
    while (await channel.declare_queue(topology.CALLBACK_QUEUE, passive=True)).declaration_result.message_count:
        assert time.monotonic() < deadline, "the worker did not take the messages"
        await asyncio.sleep(0.1)
