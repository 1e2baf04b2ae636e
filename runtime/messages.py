"""AMQP messages published again, and the confirmed publish every publisher here uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

# Properties kept when a message is published again. Left out: user_id (the
# broker refuses one that is not the publisher's own) and expiration (a copy
# must not expire out of a queue: that would lose it).
PROPERTIES = (
    "content_type", "content_encoding", "priority", "correlation_id", "reply_to",
    "message_id", "timestamp", "type", "app_id",
)


def republishable(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> aio_pika.Message:
    """A persistent copy of ``message`` (body and properties) with ``headers`` (and no others)."""
    return aio_pika.Message(
        message.body,
        headers=dict(headers),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **{name: getattr(message, name) for name in PROPERTIES},
    )


async def publish_confirmed(
    exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, timeout: float
) -> None:
    """Publish ``message``; return only once the broker confirmed it, raise otherwise.

    ``mandatory`` plus a channel opened with ``on_return_raises`` (as the broker
    session and ``ops.connect`` open theirs) turns "no queue took it" into an
    error, not a silent drop.
    """
    await exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout)
