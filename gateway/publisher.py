"""Publish one callback body to the broker and wait for its confirm."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Awaitable, Callable

from runtime import tracing
from runtime.amqp import BrokerSession
from runtime.messages import publish_confirmed
from schemas import topology
from schemas.message import callback_message
from schemas.topology import Topology

# (broker session, body, content type, timeout) -> the message id, once confirmed.
Publish = Callable[["BrokerSession[Topology]", bytes, str, float], Awaitable[str]]


class PublishFailed(Exception):
    """The broker did not confirm the message: the caller must not claim success."""


async def publish_callback(
    broker: BrokerSession[Topology], body: bytes, content_type: str, timeout: float
) -> str:
    """Publish ``body`` exactly as received; return its message id once confirmed."""
    message_id = str(uuid.uuid4())
    message = callback_message(
        body, content_type, message_id=message_id, received_at=datetime.datetime.now(datetime.UTC)
    )
    try:
        _channel, declared = broker.usable()
        # Mandatory + on_return_raises: an unroutable message raises instead of
        # being dropped; the outer deadline also covers a publish that hangs on a
        # half-dead connection (aio-pika's own timeout covers only the confirm).
        # asyncio.timeout, not wait_for: no extra task per callback.
        async with asyncio.timeout(timeout):
            with tracing.publishing(message, "publish", destination=topology.CALLBACK_EXCHANGE):
                await publish_confirmed(declared.callback_exchange, message, topology.CALLBACK_ROUTING_KEY, timeout)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        raise PublishFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
    return message_id
