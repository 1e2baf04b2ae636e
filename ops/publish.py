"""Publishing as ops do it: one message at a time, confirmed by the broker, at a bounded rate."""

from __future__ import annotations

import asyncio
import time

import aio_pika
from aio_pika.abc import AbstractExchange


async def confirmed(exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, timeout: float) -> None:
    """Publish ``message``; return only once the broker confirmed it, raise otherwise.

    ``mandatory`` plus a channel opened with ``on_return_raises`` (see
    ``ops.connect``) turns "no queue took it" into an error, not a silent drop.
    """
    await exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout)


class Pacer:
    """Spaces actions at most ``rate`` per second (``None``: as fast as confirms come back).

    A replay of many thousand messages should not starve the callbacks that
    keep arriving; ``--rate`` lets the operator trickle it.
    """

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if now < self._next:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval
