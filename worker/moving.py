"""Move a message elsewhere (dead-letter queue, retry queue, back to its own queue), losing nothing on the way.

RabbitMQ's own dead-lettering (a reject) cannot add headers, so we publish a copy
ourselves, with the original body and properties plus headers saying why, when
and by whom; only once the broker has confirmed that copy is the original acked.
A crash in between leaves both: the original is redelivered and moved again, so
a moved message may be doubled (which the store absorbs: same message id) but
never lost.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, FieldValue

from runtime import tracing
from runtime.messages import publish_confirmed, republishable
from schemas import topology
from schemas.topology import Topology


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def copy_of(message: AbstractIncomingMessage, headers: Mapping[str, FieldValue]) -> aio_pika.Message:
    """The message with its body and properties, plus (or overriding) ``headers``."""
    return republishable(message, {**(message.headers or {}), **headers})


def dead_letter_copy(
    message: AbstractIncomingMessage, stage: str, error: str, error_class: str, by: str
) -> aio_pika.Message:
    return copy_of(
        message,
        {
            topology.HEADER_ERROR: error,
            topology.HEADER_ERROR_CLASS: error_class,
            topology.HEADER_ERROR_STAGE: stage,
            topology.HEADER_DEAD_LETTERED_AT: _now(),
            topology.HEADER_DEAD_LETTERED_BY: by,
        },
    )


def attempts_so_far(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(topology.HEADER_ATTEMPTS, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def retry_copy(message: AbstractIncomingMessage, attempts: int, last_error: str) -> aio_pika.Message:
    return copy_of(message, {topology.HEADER_ATTEMPTS: attempts, topology.HEADER_LAST_ERROR: last_error})


async def move(
    message: AbstractIncomingMessage,
    copy: aio_pika.Message,
    exchange: AbstractExchange,
    routing_key: str,
    timeout: float,
    *,
    traced_as: str,
    outcome: str,
    reason: str | None = None,
    always_traced: bool = False,
) -> None:
    """Publish ``copy`` with confirms (raises if not confirmed), then ack the original.

    ``traced_as``: the name of the move's span in the message's trace (runtime.tracing), with
    the callback's ``outcome`` and ``reason`` (an error's class); ``always_traced``: kept
    whatever the sampling (a dead letter), and the copy's trace with it."""
    with tracing.publishing(copy, traced_as, destination=exchange.name, parent=message.headers,
                            always=always_traced, outcome=outcome, reason=reason):
        await publish_confirmed(exchange, copy, routing_key, timeout)
    await message.ack()


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
    await move(
        message,
        dead_letter_copy(message, stage, error, error_class, by),
        declared.dead_letter_exchange,
        topology.DEAD_LETTER_ROUTING_KEY,
        timeout,
        traced_as="dead-letter",
        outcome="dead_lettered",
        reason=error_class,
        always_traced=True,
    )


async def retry_later(
    declared: Topology, message: AbstractIncomingMessage, *, attempts: int, error: str, timeout: float
) -> int:
    """Park the message in the retry queue for its attempt; returns the delay in seconds."""
    delay = topology.retry_delay(attempts)
    await move(
        message,
        retry_copy(message, attempts, error),
        declared.retry_exchange,
        topology.retry_queue(delay),
        timeout,
        traced_as="retry later",
        outcome="retried",
    )
    return delay


# Set by a quorum queue on each delivery; a copy starts its own count.
DELIVERY_COUNT_HEADER = "x-delivery-count"


async def hand_back(declared: Topology, message: AbstractIncomingMessage, *, timeout: float) -> None:
    """Back to the callbacks queue as a new message (the worker has no room for it now).

    Not a requeue: the quorum queue counts every requeue toward its delivery
    limit, so a large callback handed back often enough by busy workers was
    dead-lettered as ``delivery_limit`` without ever having failed. A copy
    starts its count afresh; should the original come back as well (the ack
    lost), the store knows its message id.
    """
    headers = {k: v for k, v in (message.headers or {}).items() if k != DELIVERY_COUNT_HEADER}
    await move(message, republishable(message, headers), declared.callback_exchange,
               topology.CALLBACK_ROUTING_KEY, timeout, traced_as="hand back", outcome="handed_back")
