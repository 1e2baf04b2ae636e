"""Publish one callback body to the broker and wait for its confirm."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import uuid

import aio_pika

from runtime.amqp import BrokerSession
from schemas import topology


class PublishFailed(Exception):
    """The broker did not confirm the message: the caller must not claim success."""


async def publish_callback(
    broker: BrokerSession, body: bytes, content_type: str, timeout: float
) -> str:
    """Publish ``body`` exactly as received; return its message id once confirmed."""
    received_at = datetime.datetime.now(datetime.UTC)
    message_id = str(uuid.uuid4())
    message = aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        content_type=content_type,
        timestamp=received_at,
        headers={
            topology.HEADER_RECEIVED_AT: received_at.isoformat(timespec="microseconds"),
            topology.HEADER_BODY_SHA256: hashlib.sha256(body).hexdigest(),
        },
    )
    try:
        _channel, declared = broker.usable()
        # Mandatory + on_return_raises: an unroutable message raises instead of
        # being dropped; the outer deadline also covers a publish that hangs on a
        # half-dead connection (aio-pika's own timeout covers only the confirm).
        # asyncio.timeout, not wait_for: no extra task per callback.
        async with asyncio.timeout(timeout):
            await declared.callback_exchange.publish(
                message,
                routing_key=topology.CALLBACK_ROUTING_KEY,
                mandatory=True,
                timeout=timeout,
            )
    except asyncio.CancelledError:
        raise
    except Exception as e:
        raise PublishFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
    return message_id
