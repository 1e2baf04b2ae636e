"""Real services, isolated: one fresh database and one fresh vhost per test run.

The base URLs point at the machine's PostgreSQL and RabbitMQ (override with
FLOWSCRIBE_TEST_DATABASE_URL / FLOWSCRIBE_TEST_AMQP_URL). The run creates
``flowscribe_test_<random>`` in both and drops them at the end, so nothing a user
keeps is touched. Creating a vhost needs ``rabbitmqctl`` (the broker is local).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.server import server_options
from runtime.settings import Secrets, Settings
from schemas import topology
from store.migrations import migrate
from tests.support import TOKEN
from worker.consumer import Worker
from worker.main import run_worker

BASE_DATABASE_URL = os.environ.get(
    "FLOWSCRIBE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BASE_AMQP_URL = os.environ.get("FLOWSCRIBE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TABLES = (
    "callbacks", "jobs", "analyses", "sentences", "sentence_entities", "sentence_intents",
    "sentence_keywords", "sentence_scorings", "sentence_topics", "conversation_summaries",
)
# Tables the worker writes apart from the callbacks' rows (not counted in flowscribe_rows_written).
SIDE_TABLES = ("schema_drift", "console_sessions", "console_audit")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _with_path(url: str, path: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + path))


@pytest.fixture(scope="session")
def run_name() -> str:
    return f"flowscribe_test_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
async def database_url(run_name: str) -> AsyncIterator[str]:
    url = _with_path(BASE_DATABASE_URL, run_name)
    await migrate(url)  # creates the database too
    yield url
    conn = await asyncpg.connect(BASE_DATABASE_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{run_name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def amqp_url(run_name: str) -> Iterator[str]:
    _rabbitmqctl("add_vhost", run_name)
    user = urllib.parse.urlsplit(BASE_AMQP_URL).username or "guest"
    _rabbitmqctl("set_permissions", "-p", run_name, user, ".*", ".*", ".*")
    yield _with_path(BASE_AMQP_URL, urllib.parse.quote(run_name, safe=""))
    _rabbitmqctl("delete_vhost", run_name)


@pytest.fixture(scope="session")
def base_settings(database_url: str, amqp_url: str) -> Settings:
    return Settings(
        amqp_url=amqp_url,
        database_url=database_url,
        callback_tokens=Secrets([TOKEN]),
        gateway_host="127.0.0.1",
        gateway_port=0,
        publish_timeout=3.0,
        batch_wait=0.02,
        shutdown_timeout=10.0,
        log_format="text",
        worker_http_port=0,
    )


@pytest.fixture(scope="session", autouse=True)
def _worker_http_on_free_ports() -> Iterator[None]:
    """Worker processes the tests start serve their HTTP port on a free one, not all on 8081."""
    previous = os.environ.get("FLOWSCRIBE_WORKER_HTTP_PORT")
    os.environ["FLOWSCRIBE_WORKER_HTTP_PORT"] = "0"
    yield
    if previous is None:
        del os.environ["FLOWSCRIBE_WORKER_HTTP_PORT"]
    else:
        os.environ["FLOWSCRIBE_WORKER_HTTP_PORT"] = previous


@pytest.fixture(scope="session")
async def _pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture(scope="session")
async def _channel(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel)
        yield channel


@pytest.fixture
async def fresh(_pool: asyncpg.Pool, _channel: aio_pika.abc.AbstractChannel) -> None:
    """Empty tables and queues: every test that uses the services starts from nothing."""
    await _pool.execute("TRUNCATE " + ", ".join(f"flowscribe.{t}" for t in (*TABLES, *SIDE_TABLES)))
    retry_queues = [topology.retry_queue(d) for d in topology.RETRY_DELAYS_SECONDS]
    for name in (topology.CALLBACK_QUEUE, topology.DEAD_LETTER_QUEUE, *retry_queues):
        queue = await _channel.get_queue(name)
        await queue.purge()


@pytest.fixture
def db(_pool: asyncpg.Pool, fresh: None) -> asyncpg.Pool:
    """A pool on the test run's database (tables emptied for this test)."""
    return _pool


@pytest.fixture
def broker(_channel: aio_pika.abc.AbstractChannel, fresh: None) -> aio_pika.abc.AbstractChannel:
    """A plain channel on the test run's vhost, topology declared (queues purged for this test)."""
    return _channel


@pytest.fixture
def settings(base_settings: Settings, db: asyncpg.Pool, broker: object) -> Settings:
    return base_settings


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[TestServer]:
    """The gateway app on a free port, connected to the test vhost."""
    # The same server options as production (access log, deadlines).
    server = TestServer(create_app(settings))
    await server.start_server(**server_options(settings))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class RunningWorker:
    """An in-process worker task with its own stop switch."""

    def __init__(self, settings: Settings) -> None:
        self.stop_event = asyncio.Event()
        self.started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[Worker] = asyncio.create_task(
            run_worker(settings, self.stop_event, started=self.started.set_result))

    async def http_port(self, timeout: float = 30) -> int:
        """The port its HTTP server is bound to, once it is (what run_worker hands to ``started``)."""
        worker = await asyncio.wait_for(asyncio.shield(self.started), timeout)
        assert worker.http_port is not None
        return worker.http_port

    async def stop(self, timeout: float = 30) -> Worker:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, timeout)


StartWorker = Callable[..., RunningWorker]


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[StartWorker]:
    """Start in-process workers (settings overridable); all are stopped at the end."""
    running: list[RunningWorker] = []

    def start(**overrides: Any) -> RunningWorker:
        worker = RunningWorker(dataclasses.replace(settings, **overrides))
        running.append(worker)
        return worker

    yield start
    for worker in running:
        worker.stop_event.set()
    for worker in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker.task, 30)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's figures, one line per scenario, at the end of the run."""
    from tests.faults.checker import REPORT

    if REPORT:
        terminalreporter.section("fault suite figures")
        for line in REPORT:
            terminalreporter.write_line(line)
