"""Publish one callback body to the broker and wait for its confirm."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Awaitable, Callable

import aio_pika

from runtime import tracing
from runtime.amqp import BrokerSession
from runtime.messages import publish_confirmed
from schemas import topology
from schemas.message import callback_message
from schemas.topology import Topology

# (broker session, message, timeout) -> once the broker confirmed it; raises PublishFailed otherwise.
# One attempt: gateway.publish_hold decides whether to try again.
Publish = Callable[["BrokerSession[Topology]", aio_pika.Message, float], Awaitable[None]]


class PublishFailed(Exception):
    """The broker did not confirm the message: the caller must not claim success."""


def new_callback_message(body: bytes, content_type: str) -> aio_pika.Message:
    """``body`` as the gateway publishes it, with a fresh message id and the time received.

    Built once per callback: a publish tried again carries the same id and
    version, so that a copy the broker did take after all is recognised by the
    worker as the same callback (a redelivery), not as another one.
    """
    return callback_message(
        body, content_type, message_id=str(uuid.uuid4()), received_at=datetime.datetime.now(datetime.UTC)
    )


async def publish_message(broker: BrokerSession[Topology], message: aio_pika.Message, timeout: float) -> None:
    """Publish ``message`` once; return once confirmed, else raise PublishFailed."""
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


async def publish_callback(
    broker: BrokerSession[Topology], body: bytes, content_type: str, timeout: float
) -> str:
    """Publish ``body`` exactly as received, once; return its message id once confirmed."""
    message = new_callback_message(body, content_type)
    await publish_message(broker, message, timeout)
    assert message.message_id is not None
    return message.message_id
