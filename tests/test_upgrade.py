"""A rolling upgrade from the previous release to this tree, done as the README ("Upgrading") tells
operators, under a sender that never stops: every promise checked at the end.

The previous release runs as an operator has it: its own tree and its own pinned dependencies in
its own virtualenv (tests/releases.py). Both releases share the test's own database and vhost,
real PostgreSQL and RabbitMQ. The gateway stands behind a tiny TCP balancer, as behind a
Service: it is swapped by starting its successor, putting that in rotation, taking the old one
out (its open connections finish) and only then stopping it (a surge of one, as a Deployment's
rolling update with maxSurge 1), so the sender sees no refusal with a single gateway. More
gateways are swapped the same way, one at a time (System.swap_all).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import random
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest

from bench import payloads
from runtime.settings import Settings
from schemas import topology
from schemas.decoding import decode_payload
from schemas.message import Callback
from store.batch import write_batch
from store.connection import Connection, connect
from tests.releases import PREVIOUS_RELEASE, THIS_TREE, Release, ReleaseMissing, installed
from tests.support import TOKEN, CliProcess, eventually, service_env
from tests.test_ops import ops

RATE = 20  # callbacks per second, the steady load of the field report
STEP = 10  # callbacks the sender gets through between two steps of the upgrade
POISON = b'{"Success": tru'  # not JSON: meant for the dead-letter queue, whichever worker reads it


# --- the balancer --------------------------------------------------------------------------------


class Balancer:
    """New connections go round-robin to the gateways in rotation; one taken out gets no new ones
    and its open connections finish (a Service's endpoints during a rollout)."""

    def __init__(self) -> None:
        self.rotation: list[int] = []
        self.connecting: collections.Counter[int] = collections.Counter()  # connections being opened, per gateway
        self.port = 0
        self._turn = 0
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        port = self.rotation[self._turn % len(self.rotation)]
        self._turn += 1
        self.connecting[port] += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_writer.transport.abort()  # the sender sees it: a connection error
            return
        finally:
            self.connecting[port] -= 1

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))


# --- the sender ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Post:
    kind: str  # "new" analysis, "newer" version of an earlier one, "duplicate" of an earlier body, "poison"
    body: bytes
    analysis_id: str | None
    step: str  # the step of the upgrade it was sent in
    at: float = 0.0  # when it was sent (monotonic)
    status: int | None = None
    message_id: str | None = None
    error: str | None = None


class Sender:
    """Posts a callback every 1/RATE s through the balancer, one after another, whatever happens
    behind it: new analyses, newer versions of earlier ones, the vendor retrying a body that has
    landed (a duplicate), and now and then a body that is not JSON."""

    def __init__(self, url: str, ledger: asyncpg.Pool) -> None:
        self.url = url
        self.ledger = ledger
        self.posts: list[Post] = []
        self.step = "old release"
        self._rng = random.Random(24)
        self._landed: list[Post] = []  # accepted analyses whose callback is in the ledger: retried as duplicates
        self._stop = asyncio.Event()

    def _next(self, n: int) -> Post:
        versions = [p for p in self.posts if p.kind in ("new", "newer") and p.message_id]
        if n % 29 == 28:
            return Post("poison", POISON, None, self.step)
        if n % 7 == 6 and self._landed:
            earlier = self._rng.choice(self._landed)
            return Post("duplicate", earlier.body, earlier.analysis_id, self.step)
        if n % 5 == 4 and versions:
            payload = payloads.build("small", 100_000 + n)
            payload["ConversationAnalysisModel"]["ID"] = self._rng.choice(versions).analysis_id
            return Post("newer", json.dumps(payload).encode(), payload["ConversationAnalysisModel"]["ID"], self.step)
        payload = payloads.build("small", n)
        return Post("new", json.dumps(payload).encode(), payload["ConversationAnalysisModel"]["ID"], self.step)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True)  # a connection per callback, as the vendor posts
        async with aiohttp.ClientSession(connector=connector) as session:
            n, due = 0, time.monotonic()
            while not self._stop.is_set():
                post = self._next(n)
                post.at = time.monotonic()
                try:
                    async with session.post(self.url, data=post.body, headers={"Content-Type": "application/json"},
                                            timeout=aiohttp.ClientTimeout(total=10)) as r:
                        post.status = r.status
                        if r.status == 202:
                            post.message_id = (await r.json())["id"]
                except (aiohttp.ClientError, TimeoutError) as e:
                    post.error = repr(e)
                self.posts.append(post)
                n += 1
                if n % 10 == 0:
                    await self._note_landed()
                due += 1 / RATE
                await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _note_landed(self) -> None:
        # A retry of a body still in the queue could land first and take its place: retry only landed ones.
        known = {p.message_id for p in self._landed}
        candidates = [p for p in self.posts
                      if p.kind in ("new", "newer") and p.message_id and p.message_id not in known]
        landed = {str(r["id"]) for r in await self.ledger.fetch(
            "SELECT id FROM flowscribe.callbacks WHERE id = ANY($1::uuid[])", [p.message_id for p in candidates])}
        self._landed += [p for p in candidates if p.message_id in landed]

    async def through(self, step: str, count: int = STEP) -> None:
        """Name the step from now on, and wait until ``count`` more callbacks were posted in it."""
        self.step = step
        start = len(self.posts)
        await eventually(lambda: _true(len(self.posts) >= start + count), timeout=60, what=f"{count} posts in {step}")

    def stop(self) -> None:
        self._stop.set()


async def _true(value: bool) -> bool:
    return value


# --- the system under upgrade --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Gateway:
    process: CliProcess
    port: int


class System:
    """The processes of both releases on one database and vhost, started and stopped as an operator does."""

    def __init__(self, settings: Settings, broker: aio_pika.abc.AbstractChannel) -> None:
        self.env = service_env(settings)
        self.broker = broker
        self.balancer = Balancer()
        self.processes: list[CliProcess] = []

    async def migrate(self, release: Release) -> None:
        process = await release.start("migrate", self.env)
        assert await process.exited(timeout=120) == 0, process.output

    async def consumers(self) -> int:
        queue = await self.broker.declare_queue(topology.CALLBACK_QUEUE, passive=True)
        return int(queue.declaration_result.consumer_count or 0)

    async def start_worker(self, release: Release) -> CliProcess:
        before = await self.consumers()
        process = await release.start("worker", self.env)
        self.processes.append(process)
        await eventually(lambda: self._consuming(process, before + 1), timeout=60, what=f"{process.command} consuming")
        return process

    async def _consuming(self, process: CliProcess, count: int) -> bool:
        if process.process.returncode is not None:
            raise AssertionError(f"{process.command} exited:\n{process.output}")
        return await self.consumers() >= count

    async def start_gateway(self, release: Release, rotate: bool = True) -> Gateway:
        port = free_port()
        process = await release.start("gateway", {**self.env, "FLOWSCRIBE_GATEWAY_PORT": str(port)})
        self.processes.append(process)

        async def ready() -> bool:
            if process.process.returncode is not None:
                raise AssertionError(f"{process.command} exited:\n{process.output}")
            try:
                async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=60, what=f"{process.command} ready")
        if rotate:
            self.balancer.rotation.append(port)
        return Gateway(process, port)

    async def swap_all(self, old: list[Gateway], release: Release) -> list[Gateway]:
        """Each gateway in turn: its successor in rotation first, then the old one out of it (its
        open connections finish), then stopped. The successors start together, to be quick."""
        new = list(await asyncio.gather(*(self.start_gateway(release, rotate=False) for _ in old)))
        for before, after in zip(old, new, strict=True):
            self.balancer.rotation.append(after.port)
            self.balancer.rotation.remove(before.port)
            # A connection the balancer sent it just before is opened before it stops listening.
            await eventually(functools.partial(self._opened, before.port), what="connections opened")
            assert await before.process.stop() == 0, before.process.output
        return new

    async def _opened(self, port: int) -> bool:
        return not self.balancer.connecting[port]

    async def stop_all(self) -> None:
        for process in self.processes:
            if process.process.returncode is None:
                await process.stop()
        await self.balancer.close()


# --- set-up ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def previous_release() -> Release:
    try:
        return installed(PREVIOUS_RELEASE)
    except ReleaseMissing as e:
        pytest.fail(str(e))  # not a skip: the upgrade would go untested without anyone noticing


@pytest.fixture
async def own_services(base_settings: Settings, run_name: str) -> AsyncIterator[Settings]:
    """A database and a vhost of the upgrade's own, left as the previous release created them."""
    name = f"{run_name}_upgrade"
    database_url = base_settings.database_url.rsplit("/", 1)[0] + "/" + name
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
    user = urllib.parse.urlsplit(base_settings.amqp_url).username or "guest"
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", name, user, ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=60)
    amqp_url = base_settings.amqp_url.rsplit("/", 1)[0] + "/" + urllib.parse.quote(name, safe="")
    try:
        yield dataclasses.replace(base_settings, database_url=database_url, amqp_url=amqp_url)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)
        admin = await connect(base_settings.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# --- the checks ------------------------------------------------------------------------------------


VIEWS_SQL = "SELECT table_name FROM information_schema.views WHERE table_schema = 'flowscribe_analytics'"


async def views(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every analytics view's rows, in a stable order, floats rounded past the last bits that a
    different order of summation changes."""
    found = {}
    for (name,) in await conn.fetch(VIEWS_SQL):
        rows = [tuple(round(v, 9) if isinstance(v, float) else v for v in r.values())
                for r in await conn.fetch(f"SELECT * FROM flowscribe_analytics.{name}")]
        found[name] = sorted(rows, key=repr)
    return found


async def fresh_ingest(ledger: asyncpg.Pool, into: asyncpg.Pool) -> None:
    """The callbacks the upgraded system landed, written again into an empty database by this tree."""
    rows = await ledger.fetch("SELECT id, received_at, content_type, body_sha256, body FROM flowscribe.callbacks"
                              " ORDER BY received_at, id")
    callbacks = [Callback(r["id"], r["received_at"], r["content_type"], r["body_sha256"], r["body"],
                          decode_payload(r["body"], r["content_type"])) for r in rows]
    async with into.acquire() as conn:
        for start in range(0, len(callbacks), 25):
            await write_batch(conn, callbacks[start:start + 25])


async def queue_depths(broker: aio_pika.abc.AbstractChannel) -> dict[str, int]:
    names = [topology.CALLBACK_QUEUE, topology.DEAD_LETTER_QUEUE,
             *(topology.retry_queue(d) for d in topology.RETRY_DELAYS_SECONDS)]
    depths = {}
    for name in names:
        queue = await broker.declare_queue(name, passive=True)
        depths[name] = int(queue.declaration_result.message_count or 0)
    return depths


# --- the upgrade -------------------------------------------------------------------------------------


class TestRollingUpgrade:
    async def test_from_the_previous_release_and_back_under_load(self, previous_release, own_services, db):
        settings = own_services
        sender: Sender | None = None
        sender_task: asyncio.Task[None] | None = None
        # The previous release creates its schema, as it did when it was deployed.
        async with contextlib.AsyncExitStack() as stack:
            connection = await aio_pika.connect(settings.amqp_url)
            stack.push_async_callback(connection.close)
            broker = await connection.channel()
            system = System(settings, broker)
            await system.migrate(previous_release)
            ledger = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
            stack.push_async_callback(ledger.close)
            await system.balancer.open()
            stack.push_async_callback(system.stop_all)
            try:
                gateways = [await system.start_gateway(previous_release)]
                old_worker = await system.start_worker(previous_release)
                sender = Sender(f"http://127.0.0.1:{system.balancer.port}/flowscribe/callback/{TOKEN}", ledger)
                sender_task = asyncio.create_task(sender.run())

                await sender.through("old release", 2 * STEP)
                # 1. The new migrate, while the old gateways and worker run.
                sender.step = "new migrate beside the old release"
                await system.migrate(THIS_TREE)
                # 2. New workers beside the old.
                await sender.through("new migrate beside the old release")
                new_worker = await system.start_worker(THIS_TREE)
                await sender.through("new worker beside the old")
                # 3. The old workers stopped (each lands its batch in hand, then exits).
                assert await old_worker.stop() == 0, old_worker.output
                await sender.through("old worker stopped")
                # 4. New gateways swapped in, one at a time.
                sender.step = "gateway swap"
                gateways = await system.swap_all(gateways, THIS_TREE)
                await sender.through("gateway swap")
                # 5. The new migrate again, once no old process is left.
                sender.step = "second migrate"
                await system.migrate(THIS_TREE)
                await sender.through("second migrate")

                # Back by one release, the same way (there is no migrating down): an old worker
                # beside the new takes the new gateways' messages, on the new migrations' tables.
                sender.step = "roll back: old worker beside the new"
                await system.start_worker(previous_release)
                await sender.through("roll back: old worker beside the new")
                assert await new_worker.stop() == 0, new_worker.output
                await sender.through("roll back: new worker stopped")
                sender.step = "roll back: gateway swap"
                gateways = await system.swap_all(gateways, previous_release)
                await sender.through("roll back: gateway swap")
            finally:
                if sender is not None and sender_task is not None:
                    sender.stop()
                    await sender_task

            posts = sender.posts
            accepted = [p for p in posts if p.status == 202]
            # The sender saw no refusal and no connection error, in any step (the swap included).
            assert [(p.step, p.status, p.error) for p in posts if p.status != 202] == []
            poison = {p.message_id for p in accepted if p.kind == "poison"}
            landing = {p.message_id for p in accepted if p.kind != "poison"}

            # Every 202 landed once: in the ledger, or (only those meant) in the dead-letter queue.
            async def all_landed() -> bool:
                count = await ledger.fetchval("SELECT count(*) FROM flowscribe.callbacks")
                depths = await queue_depths(broker)
                return count == len(landing) and depths[topology.DEAD_LETTER_QUEUE] == len(poison)

            await eventually(all_landed, timeout=60, what="every accepted callback landed")
            assert {str(r["id"]) for r in await ledger.fetch("SELECT id FROM flowscribe.callbacks")} == landing
            letters = await ops(settings, "dlq", "list", "--json")  # this tree's command on both releases' letters
            assert letters.code == 0, letters.err
            dead = [json.loads(line) for line in letters.out.splitlines()]
            assert {d["message_id"] for d in dead} == poison and all(d["reason"] for d in dead), dead
            assert {name: n for name, n in (await queue_depths(broker)).items()
                    if name != topology.DEAD_LETTER_QUEUE and n} == {}

            # Duplicates and newer versions across the upgrade: the last version sent of each analysis is
            # the stored one, and every retried body is a duplicate.
            outcomes = {str(r["id"]): r["outcome"] for r in await ledger.fetch(
                "SELECT id, outcome FROM flowscribe.callbacks")}
            assert {p.message_id: outcomes[p.message_id] for p in accepted if p.kind == "duplicate"} == {
                p.message_id: "duplicate" for p in accepted if p.kind == "duplicate"}
            last_version = {p.analysis_id: p.message_id for p in accepted if p.kind in ("new", "newer")}
            stored = {str(r["id"]): str(r["callback_id"]) for r in await ledger.fetch(
                "SELECT id, callback_id FROM flowscribe.analyses")}
            assert stored == last_version
            assert sum(p.kind == "newer" and p.step != "old release" for p in accepted) > 0  # across it

            # Every view equals what a fresh ingest of the same callbacks gives, and the operator's check agrees.
            await fresh_ingest(ledger, db)
            async with ledger.acquire() as upgraded, db.acquire() as fresh:
                assert await views(upgraded) == await views(fresh)
            check = await ops(settings, "summaries", "check", "--json")
            assert check.code == 0 and json.loads(check.out)["agree"] is True, check.out

            delays = {str(r["id"]): r["delay"] for r in await ledger.fetch(
                "SELECT id, extract(epoch FROM processed_at - received_at)::float AS delay FROM flowscribe.callbacks")}
            report(posts, outcomes, delays)


def report(posts: list[Post], outcomes: dict[str, str], delays: dict[str, float]) -> None:
    """The scenario's figures, per step (shown with -s; the closing note quotes them): posts and
    answers, outcomes, and the longest wait from 202 to landing."""
    steps: dict[str, dict[str, Any]] = {}
    for p in posts:
        row = steps.setdefault(p.step, {"seconds": 0.0, "posts": 0, "202": 0, "other": 0, "longest landing s": 0.0})
        row["posts"] += 1
        row["seconds"] = round(p.at - next(q.at for q in posts if q.step == p.step), 1)
        row["202" if p.status == 202 else "other"] += 1
        if p.message_id:
            outcome = outcomes.get(p.message_id, "dead-lettered")
            row[outcome] = row.get(outcome, 0) + 1
            row["longest landing s"] = round(max(row["longest landing s"], delays.get(p.message_id, 0.0)), 2)
    for step, row in steps.items():
        print(f"| {step} | " + " | ".join(f"{k} {v}" for k, v in row.items()) + " |")


def test_a_clone_without_the_previous_release_fails_saying_what_to_do(tmp_path):
    # A shallow clone lacks the pinned commit: the upgrade test must fail with the fix, not skip.
    with pytest.raises(ReleaseMissing, match="fetch --unshallow"):
        installed("0" * 40, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half installed
