"""The AMQP topology: every exchange, queue, routing key, argument and header name.

Whoever starts first (gateway, worker, ops command) declares all of it; the
declarations are idempotent, so the order in which processes start does not
matter. Queue arguments are part of a queue's identity in RabbitMQ: changing one
here for an existing deployment makes ``declare`` fail with PRECONDITION_FAILED,
so treat them as a schema (add a new queue name rather than edit them).
"""

from __future__ import annotations

import dataclasses

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, FieldValue

# Callbacks accepted by the gateway, waiting for a worker.
CALLBACK_EXCHANGE = "flowscribe.callbacks"
CALLBACK_ROUTING_KEY = "callback"
CALLBACK_QUEUE = "flowscribe.callbacks"

# Messages no worker could land, each with the reason; ops inspect and replay them.
DEAD_LETTER_EXCHANGE = "flowscribe.dead-letter"
DEAD_LETTER_ROUTING_KEY = "dead-letter"
DEAD_LETTER_QUEUE = "flowscribe.dead-letter"
# Not declared with the rest: an ops command that reads the dead-letter queue
# holds it as an exclusive queue (gone with its connection), so two never
# interleave their reads (see ops.dead_letters).
OPS_LOCK_QUEUE = "flowscribe.ops.lock"

# Messages waiting to be tried again after a transient failure: one queue per
# delay, each holding its messages for that long (message TTL) and then
# dead-lettering them back to the callbacks exchange. Fixed delays per queue,
# because a queue's TTL only expires messages at its head.
RETRY_EXCHANGE = "flowscribe.retry"
RETRY_DELAYS_SECONDS = (1, 5, 30, 120, 600)


def retry_queue(delay_seconds: int) -> str:
    """Queue name (and routing key on RETRY_EXCHANGE) of one retry delay."""
    return f"flowscribe.retry.{delay_seconds}s"


def retry_delay(attempt: int) -> int:
    """Delay before attempt ``attempt + 1``, growing per attempt (1-based)."""
    return RETRY_DELAYS_SECONDS[min(attempt, len(RETRY_DELAYS_SECONDS)) - 1]


# A message redelivered this many times is dead-lettered by the broker itself
# (reason `delivery_limit` in `x-death`): the backstop for a message that kills
# every worker that takes it, so it cannot loop forever.
DELIVERY_LIMIT = 20

CALLBACK_QUEUE_ARGUMENTS: dict[str, FieldValue] = {
    # Replicated, every message on disk, and a delivery counter.
    "x-queue-type": "quorum",
    "x-delivery-limit": DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    "x-dead-letter-routing-key": DEAD_LETTER_ROUTING_KEY,
    # Broker-side dead-lettering is at-most-once unless asked otherwise, and
    # at-least-once requires reject-publish overflow.
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, FieldValue] = {"x-queue-type": "quorum"}


def retry_queue_arguments(delay_seconds: int) -> dict[str, FieldValue]:
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": delay_seconds * 1000,
        "x-dead-letter-exchange": CALLBACK_EXCHANGE,
        "x-dead-letter-routing-key": CALLBACK_ROUTING_KEY,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }

# Headers the gateway sets on every callback message.
HEADER_RECEIVED_AT = "x-flowscribe-received-at"  # ISO 8601, UTC, microseconds
HEADER_BODY_SHA256 = "x-flowscribe-body-sha256"  # hex digest of the exact body

# Set by the worker when it sends a message to a retry queue: how many write
# attempts failed so far, and the last failure.
HEADER_ATTEMPTS = "x-flowscribe-attempts"
HEADER_LAST_ERROR = "x-flowscribe-last-error"

# Headers the worker adds when it dead-letters a message.
HEADER_ERROR = "x-flowscribe-error"  # "ErrorClass: message"
HEADER_ERROR_CLASS = "x-flowscribe-error-class"
HEADER_ERROR_STAGE = "x-flowscribe-error-stage"  # decode | validate | database | retry
HEADER_DEAD_LETTERED_AT = "x-flowscribe-dead-lettered-at"  # ISO 8601, UTC
HEADER_DEAD_LETTERED_BY = "x-flowscribe-dead-lettered-by"  # worker connection name

# Headers of the trace a message travels in (W3C traceparent and tracestate, and
# x-flowscribe-published-at), set wherever it is published while tracing is on:
# named in runtime.trace_names, below this layer, for runtime.tracing sets them.

# Headers the ops commands set (flowscribe-ingest dlq replay / reprocess).
HEADER_REPLAYS = "x-flowscribe-replays"  # how often the message was replayed from the dead-letter queue
HEADER_REPROCESS = "x-flowscribe-reprocess"  # "1": re-derive the rows of this stored callback


@dataclasses.dataclass(frozen=True, slots=True)
class Topology:
    callback_exchange: AbstractExchange
    callback_queue: AbstractQueue
    dead_letter_exchange: AbstractExchange
    dead_letter_queue: AbstractQueue
    retry_exchange: AbstractExchange


async def declare(channel: AbstractChannel) -> Topology:
    """Declare (idempotently) and bind everything; return the handles."""
    dead_letter_exchange = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        DEAD_LETTER_QUEUE, durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS
    )
    await dead_letter_queue.bind(dead_letter_exchange, DEAD_LETTER_ROUTING_KEY)

    callback_exchange = await channel.declare_exchange(
        CALLBACK_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    callback_queue = await channel.declare_queue(
        CALLBACK_QUEUE, durable=True, arguments=CALLBACK_QUEUE_ARGUMENTS
    )
    await callback_queue.bind(callback_exchange, CALLBACK_ROUTING_KEY)

    retry_exchange = await channel.declare_exchange(
        RETRY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for delay in RETRY_DELAYS_SECONDS:
        queue = await channel.declare_queue(
            retry_queue(delay), durable=True, arguments=retry_queue_arguments(delay)
        )
        await queue.bind(retry_exchange, retry_queue(delay))
    return Topology(
        callback_exchange, callback_queue, dead_letter_exchange, dead_letter_queue, retry_exchange
    )
