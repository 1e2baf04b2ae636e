"""One AMQP connection and one confirm channel per process, re-made whenever lost.

We do not use aio-pika's robust connection: its restore of channels and
consumers has known gaps (consumers not resumed after some broker restarts or
broker-side cancels; publishes hanging while it reconnects), and its channels
keep delivery tags across reconnects in ways that are easy to misuse. One loop
here owns the whole lifecycle instead: connect, open a channel with publisher
confirms, declare what the caller needs (``declare``: the topology), hand the channel
to the caller's ``on_ready``,
wait until the connection or the channel closes, and start over with backoff.
Code that holds a message from a dead channel finds its ack failing, and the
broker redelivers that message: nothing is lost on a reconnect.

The setting may list several broker URLs (the nodes of a cluster). Each
process shuffles them once, then takes them in that order, round and round:
a lost connection is followed by one to the next node, a refused attempt by
the next node at once; only a whole round refused means backing off. Why
shuffled and not merely rotated from a random start: with a rotation every
process of a dead node would move on to the same successor; a per-process
order spreads them over the survivors as evenly as it spread them at start.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.connection import make_url

from runtime.errors import describe
from runtime.urls import amqp_urls, redact_url

log = logging.getLogger("flowscribe_ingest.amqp")  # the name in the log schema, from before the move

# What ``declare`` returns (schemas.topology.Topology): the runtime is below the
# contracts and knows nothing of our exchanges and queues; their user passes them in.
Declared = TypeVar("Declared")
Declare = Callable[[AbstractChannel], Awaitable[Declared]]
OnReady = Callable[[AbstractChannel, Declared], Awaitable[None]]

# Heartbeats let a process notice a silently dead link (a black-holed TCP path)
# within about two intervals, instead of the OS's TCP timeout of many minutes.
DEFAULT_HEARTBEAT = 10


class BrokerUnavailable(Exception):
    """No usable channel right now (connecting, reconnecting, or shutting down)."""


def connection_url(url: str, name: str) -> str:
    """The broker URL with a connection name (shown by the broker) and a heartbeat."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.setdefault("heartbeat", str(DEFAULT_HEARTBEAT))
    query.setdefault("name", f"flowscribe-{name}@{socket.gethostname()}")
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class NodeOrder:
    """The broker URLs in this process's order: shuffled once, then taken round and round."""

    def __init__(self, urls: Sequence[str], rng: random.Random | None = None) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self.urls = list(urls)
        (rng or random.Random()).shuffle(self.urls)
        self._next = 0

    def take(self) -> str:
        url = self.urls[self._next]
        self._next = (self._next + 1) % len(self.urls)
        return url

    def round(self) -> list[str]:
        """Every URL once, from the next one on."""
        return [self.take() for _ in self.urls]


async def connect_any(
    urls: str, name: str, *, timeout: float, rng: random.Random | None = None
) -> AbstractConnection:
    """A connection to the first broker of ``urls`` (a setting's value) that answers, in a random order.

    For a short run (an ops command); raises the last error when none answers.
    """
    error: Exception | None = None
    for url in NodeOrder(amqp_urls(urls), rng).round():
        try:
            return await _connect(connection_url(url, name), timeout)
        except Exception as e:  # noqa: BLE001 - refused, DNS, auth, timeout: try the next node
            log.debug("broker connect failed", extra={"url": redact_url(url), "reason": _describe(e)})
            error = e
    assert error is not None
    raise error


async def _connect(url: str, timeout: float) -> AbstractConnection:
    """``aio_pika.connect``, except that a failed attempt's connection is closed here.

    aio-pika leaves it to the connection's ``__del__``, which schedules the close
    on the running loop; collected on a thread without one (the garbage collector
    runs wherever it runs) the close coroutine is never awaited, and Python warns.
    A dead node in the list makes failed attempts the common case.
    """
    connection = aio_pika.Connection(make_url(url))
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        await _close_briefly(connection)
        raise
    return connection


async def _close_briefly(connection: AbstractConnection) -> None:
    """Close politely if the broker still listens, but never wait long.

    Closing a connection that died unnoticed can hang, and so can closing one whose opening
    was cancelled half-way (aio-pika waits for it to be ready); cancelling that close (as
    wait_for would) can hang as well. So the close runs on its own, for two seconds at most.
    """
    closing = asyncio.ensure_future(connection.close())
    closing.add_done_callback(_ignore_result)
    await asyncio.wait({closing}, timeout=2.0)


def _close_listener(lost: asyncio.Future[BaseException | None]) -> Callable[..., None]:
    """A close callback bound to one connection's ``lost`` future.

    Bound here, not in the loop body: a closure over the loop's variable would
    see the *next* connection's future, and a late close of the old connection
    (its teardown may finish after we reconnected) would tear down the new one.
    """

    def on_close(_sender: Any, exc: BaseException | None = None, *_: Any) -> None:
        if not lost.done():
            lost.set_result(exc)

    return on_close


class BrokerSession(Generic[Declared]):
    """Keeps one connection and one confirm channel open for as long as it is entered."""

    def __init__(
        self,
        urls: str,
        name: str,
        *,
        declare: Declare[Declared],
        prefetch: int | None = None,
        on_ready: OnReady[Declared] | None = None,
        connect_timeout: float = 5.0,
        setup_timeout: float = 15.0,
        max_backoff: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        # ``urls``: the setting's value, one URL or several comma-separated (see NodeOrder).
        self._nodes = NodeOrder([connection_url(url, name) for url in amqp_urls(urls)], rng)
        self._name = name
        self._prefetch = prefetch
        self._declare = declare
        self._on_ready = on_ready
        self._connect_timeout = connect_timeout
        self._setup_timeout = setup_timeout
        self._max_backoff = max_backoff
        self._channel: AbstractChannel | None = None
        self._topology: Declared | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self.connects = 0  # how many times a session was established (tests, metrics)
        # When the session last stopped being usable (monotonic; None while it is): how long
        # a publisher has been without a broker, e.g. for a readiness answer.
        self._down_since: float | None = time.monotonic()
        self._ready_since: float | None = None  # when the current connection became usable
        self._lost: asyncio.Future[BaseException | None] | None = None  # resolved: make a new one
        self.url: str | None = None  # of the node connected to (tests; shown only redacted)

    @property
    def ready(self) -> bool:
        return (
            self._ready.is_set()
            and self._channel is not None
            and not self._channel.is_closed
        )

    def down_for(self) -> float:
        """Seconds since the session was last usable (since it began, if never); 0 while it is."""
        if self.ready or self._down_since is None:
            return 0.0
        return time.monotonic() - self._down_since

    def up_for(self) -> float:
        """Seconds the current connection has been usable; 0 while it is not."""
        if not self.ready or self._ready_since is None:
            return 0.0
        return time.monotonic() - self._ready_since

    def renew(self, reason: str) -> bool:
        """Give up the current connection for a new one (to the next node); False if not connected.

        For a channel the broker keeps refusing although the node is up: after a
        quorum queue's leader died, RabbitMQ 3.10 was seen nacking every publish
        of a channel opened before the election for longer than a minute, while
        a channel opened afterwards publishes at once (the cluster suite).
        """
        lost = self._lost
        if lost is None or lost.done() or not self.ready:
            return False
        lost.set_result(BrokerUnavailable(reason))
        return True

    def usable(self) -> tuple[AbstractChannel, Declared]:
        """The current channel and topology, or BrokerUnavailable."""
        if not self.ready or self._topology is None or self._channel is None:
            raise BrokerUnavailable("not connected to the broker")
        return self._channel, self._topology

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def __aenter__(self) -> BrokerSession[Declared]:
        self._task = asyncio.create_task(self._run(), name=f"broker-session-{self._name}")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # A cancellation can be lost: Python 3.11's wait_for swallows one that races the
        # result it waits for (aio-pika's connect uses it). Cancel until the task has ended.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        _ignore_result(task)

    async def _run(self) -> None:
        backoff = 0.2
        refused_in_a_row = 0
        while True:
            url = self._nodes.take()
            lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
            self._lost = lost
            on_close = _close_listener(lost)
            try:
                # The whole set-up within a deadline, not only the connect: a node whose
                # queue has just lost its leader can leave a declare unanswered for minutes
                # (seen in the cluster suite), and every publish held for this session would
                # wait that long, where the next node answers at once.
                async with asyncio.timeout(self._setup_timeout):
                    self._connection = await _connect(url, self._connect_timeout)
                    self._connection.close_callbacks.add(on_close)
                    channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    channel.close_callbacks.add(on_close)
                    if self._prefetch is not None:
                        await channel.set_qos(prefetch_count=self._prefetch)
                    topology = await self._declare(channel)
                    if self._on_ready is not None:
                        await self._on_ready(channel, topology)
                self._channel, self._topology = channel, topology
                self.url = url
                self._ready.set()
                self._down_since = None
                self._ready_since = time.monotonic()
                self.connects += 1
                backoff, refused_in_a_row = 0.2, 0
                log.info("broker connected", extra={"url": redact_url(url)})
                reason = await lost
                log.warning("broker connection lost",
                            extra={"url": redact_url(url), "reason": _describe(reason)})
                pause = backoff  # brief: the next node is tried after it
            except asyncio.CancelledError:
                await self._teardown()
                raise
            except Exception as e:  # noqa: BLE001 - any failure means: try again later
                refused_in_a_row += 1
                # Another node may answer at once; only a whole round refused means waiting.
                whole_round = refused_in_a_row % len(self._nodes.urls) == 0
                pause = backoff if whole_round else 0.0
                log.warning(
                    "broker connect failed",
                    extra={"url": redact_url(url), "reason": _describe(e), "retry_in": pause},
                )
                if whole_round:
                    backoff = min(backoff * 2, self._max_backoff)
            await self._teardown()
            await asyncio.sleep(pause)

    async def _teardown(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._ready.clear()
        self._ready_since = None
        self._channel, self._topology, self.url = None, None, None
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            await _close_briefly(connection)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as "never retrieved"


def _describe(exc: BaseException | None) -> str:
    return "closed" if exc is None else describe(exc)
