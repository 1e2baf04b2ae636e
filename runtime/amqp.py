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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from runtime.errors import describe
from runtime.settings import redact_url

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


class BrokerSession(Generic[Declared]):
    """Keeps one connection and one confirm channel open for as long as it is entered."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        declare: Declare[Declared],
        prefetch: int | None = None,
        on_ready: OnReady[Declared] | None = None,
        connect_timeout: float = 5.0,
        max_backoff: float = 2.0,
    ) -> None:
        self._url = connection_url(url, name)
        self._name = name
        self._prefetch = prefetch
        self._declare = declare
        self._on_ready = on_ready
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._channel: AbstractChannel | None = None
        self._topology: Declared | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self.connects = 0  # how many times a session was established (tests, metrics)

    @property
    def ready(self) -> bool:
        return (
            self._ready.is_set()
            and self._channel is not None
            and not self._channel.is_closed
        )

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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

            # B023 marks a known bug, fixed with the cluster work: a late close callback of
            # an old connection resolves the future of the new one.
            def on_close(_sender: Any, exc: BaseException | None = None, *_: Any) -> None:
                if not lost.done():  # noqa: B023
                    lost.set_result(exc)  # noqa: B023

            try:
                self._connection = await aio_pika.connect(
                    self._url, timeout=self._connect_timeout
                )
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
                self._ready.set()
                self.connects += 1
                backoff = 0.2
                log.info("broker connected", extra={"url": redact_url(self._url)})
                reason = await lost
                log.warning("broker connection lost", extra={"reason": _describe(reason)})
            except asyncio.CancelledError:
                await self._teardown()
                raise
            except Exception as e:  # noqa: BLE001 - any failure means: try again later
                log.warning(
                    "broker connect failed",
                    extra={"url": redact_url(self._url), "reason": _describe(e), "retry_in": backoff},
                )
            await self._teardown()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _teardown(self) -> None:
        self._ready.clear()
        self._channel, self._topology = None, None
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            # Close politely if the broker still listens, but never wait long:
            # closing a connection that died unnoticed can hang, and cancelling
            # that close (as wait_for would) can hang as well.
            closing = asyncio.ensure_future(connection.close())
            closing.add_done_callback(_ignore_result)
            await asyncio.wait({closing}, timeout=2.0)


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as "never retrieved"


def _describe(exc: BaseException | None) -> str:
    return "closed" if exc is None else describe(exc)
