"""Move a message to the dead-letter queue with the reason, losing nothing on the way.

RabbitMQ's own dead-lettering (a reject) cannot add headers, so we publish a copy
ourselves, with the original body and properties plus headers saying why, when
and by whom; only once the broker has confirmed that copy is the original acked.
A crash in between leaves both: the original is redelivered and dead-lettered
again, so a dead letter may be doubled but never lost.
"""

from __future__ import annotations

import datetime

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from schemas import topology
from schemas.topology import Topology


def dead_letter_copy(
    message: AbstractIncomingMessage, stage: str, error: str, error_class: str, by: str
) -> aio_pika.Message:
    headers = dict(message.headers or {})
    headers.update(
        {
            topology.HEADER_ERROR: error,
            topology.HEADER_ERROR_CLASS: error_class,
            topology.HEADER_ERROR_STAGE: stage,
            topology.HEADER_DEAD_LETTERED_AT: datetime.datetime.now(datetime.UTC).isoformat(
                timespec="microseconds"
            ),
            topology.HEADER_DEAD_LETTERED_BY: by,
        }
    )
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        # user_id is left out: the broker rejects a user_id that is not ours.
    )


async def dead_letter(
    declared: Topology,
    message: AbstractIncomingMessage,
    *,
    stage: str,
    error: str,
    error_class: str,
    by: str,
    timeout: float,
) -> None:
    """Publish the copy with confirms (raises if not confirmed), then ack the original."""
    await declared.dead_letter_exchange.publish(
        dead_letter_copy(message, stage, error, error_class, by),
        routing_key=topology.DEAD_LETTER_ROUTING_KEY,
        mandatory=True,
        timeout=timeout,
    )
    await message.ack()
