"""Reading the dead-letter queue without changing it, and choosing dead letters.

How reading leaves the queue as it was. ``DeadLetterQueue`` takes the queue's
depth (ready messages), consumes on its own channel with manual acks and a
prefetch as large as that depth, and never acks what it only looked at;
closing the channel hands every unacked message back. What we found on
RabbitMQ 3.10 (quorum queue) by experiment, and what the design follows from:

- Messages handed back by a channel close go back ahead of messages never
  delivered, in their original order among themselves, but *behind* messages
  already waiting to be redelivered. So a reader that took only part of the
  queue would move those to the back (read 2 of 10 after an earlier read:
  3..10, 1, 2). A reader here therefore takes every ready message into its
  hands before it gives any back, even when it needed fewer (``--limit``),
  and then the order after equals the order before: for a whole read, a read
  that removed some (a replay), and beyond 32 held messages.
- ``basic.get`` is never used: messages taken with it and handed back came
  back out of order (for more than 32, in hash order).
- The hand-back is asynchronous: the channel closes before the queue shows the
  messages as ready again, and a reader starting then would see only part of
  the queue (and, by the first point, reorder it). So leaving waits (bounded)
  until the ready count shows them back.
- Two readers at once would each hold part of the queue. An exclusive queue
  (``flowscribe.ops.lock``, owned by the reader's connection, so a killed
  reader releases it) lets only one ops command read at a time; another waits
  a few seconds for it, then says so.

What a read does change: the broker counts each return as a delivery, so a
message's ``x-delivery-count`` grows by one and it is flagged ``redelivered``.
Nothing reads those on the dead-letter queue: it has no delivery limit and no
consumer but these commands, and a replay drops the counter. (A delivery limit
on this queue would make repeated reads drop messages: RabbitMQ 4.x sets 20 on
every quorum queue by default, and before 4.3 counts these returns; the README
says to lift it there.)

Acting on a dead letter (replay, purge, export --remove) is an ack on the same
channel (``remove``), sent only once the message is safe elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import time
from collections.abc import AsyncIterator
from typing import Any

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from ops.errors import OpsError
from ops.messages import replays
from ops.selection import Selector
from schemas import topology
from worker.consumer import InvalidMessage, to_callback
from schemas.decoding import PayloadDecodeError, decode_payload
from worker.failures import describe
from store.rows import Callback

# AMQP's prefetch count is 16 bits; 0 means no limit.
MAX_PREFETCH = 65535
# How long leaving waits for the broker to show the returned messages as ready.
SETTLE_TIMEOUT = 10.0
# How long a command waits for another one to finish reading.
LOCK_WAIT = 5.0


@dataclasses.dataclass(slots=True)
class DeadLetter:
    """One message in the dead-letter queue, and what its headers say about it."""

    position: int  # 1-based, in queue order when read
    message: AbstractIncomingMessage
    dead_lettered_at: datetime.datetime | None
    reason: str
    stage: str  # decode | validate | database | retry (the worker's), or broker
    attempts: int | None
    received_at: datetime.datetime | None

    @property
    def message_id(self) -> str:
        return self.message.message_id or ""

    @classmethod
    def of(cls, position: int, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers or {}
        death = _last_death(headers)
        error = headers.get(topology.HEADER_ERROR)
        if isinstance(error, str):
            reason, stage = error, str(headers.get(topology.HEADER_ERROR_STAGE, ""))
        elif death is not None:
            reason = f"{death.get('reason', 'unknown')} (broker, from {death.get('queue', '?')})"
            stage = "broker"
        else:
            reason, stage = "unknown (no x-flowscribe-error or x-death header)", ""
        dead_lettered_at = _time(headers.get(topology.HEADER_DEAD_LETTERED_AT))
        if dead_lettered_at is None and death is not None:
            dead_lettered_at = _time(death.get("time"))
        return cls(
            position=position,
            message=message,
            dead_lettered_at=dead_lettered_at,
            reason=reason,
            stage=stage,
            attempts=_attempts(headers, death),
            received_at=_time(headers.get(topology.HEADER_RECEIVED_AT)),
        )

    def summary(self) -> dict[str, Any]:
        """The row of ``dlq list`` (and its JSON object)."""
        analysis_id = None
        try:
            payload = decode_payload(self.message.body, self.message.content_type)
        except PayloadDecodeError:
            pass
        else:
            if payload.ConversationAnalysisModel is not None:
                analysis_id = str(payload.ConversationAnalysisModel.ID)
        return {
            "position": self.position,
            "message_id": self.message_id,
            "dead_lettered_at": self.dead_lettered_at,
            "reason": self.reason,
            "stage": self.stage,
            "attempts": self.attempts,
            "replays": replays(self.message),
            "received_at": self.received_at,
            "size": len(self.message.body),
            "content_type": self.message.content_type,
            "analysis_id": analysis_id,
        }


def recheck(message: AbstractIncomingMessage) -> tuple[Callback | None, str | None]:
    """What the worker would make of ``message`` now: the decoded callback, or why it still fails."""
    try:
        return to_callback(message), None
    except (PayloadDecodeError, InvalidMessage) as e:
        return None, describe(e)


def _last_death(headers: dict[str, Any]) -> dict[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]  # the broker keeps the most recent first
    return None


def _attempts(headers: dict[str, Any], death: dict[str, Any] | None) -> int | None:
    value = headers.get(topology.HEADER_ATTEMPTS)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if death is not None and isinstance(death.get("count"), int):
        if death.get("reason") == "delivery_limit" and death.get("queue") == topology.CALLBACK_QUEUE:
            # Each time it took every delivery the callbacks queue allows, plus the one over.
            return death["count"] * (topology.DELIVERY_LIMIT + 1)
        return death["count"]
    # Dead-lettered by a worker without a retry count: decode, validation and
    # data errors are dead-lettered at their first attempt.
    return 1 if topology.HEADER_ERROR in headers else None


def _time(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
    return None


# --- reading -------------------------------------------------------------------


class DeadLetterQueue:
    """The dead-letter queue's messages, held unacked on one channel while entered (see module docstring)."""

    def __init__(self, connection: AbstractConnection, *, idle_timeout: float = 2.0) -> None:
        self._connection = connection
        self._idle_timeout = idle_timeout
        self._lock: AbstractChannel | None = None
        self._channel: AbstractChannel | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._delivered = 0
        self._removed = 0
        self.depth = 0  # ready messages when entered: what one pass reads
        self._all_delivered = asyncio.Event()

    async def __aenter__(self) -> DeadLetterQueue:
        await self._take_lock()
        self._channel = await self._connection.channel(publisher_confirms=False)
        queue = await self._channel.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
        self.depth = queue.declaration_result.message_count or 0
        if self.depth:
            # Large enough to hold the whole queue (see the module docstring).
            await self._channel.set_qos(prefetch_count=self.depth if self.depth <= MAX_PREFETCH else 0)
            await queue.consume(self._deliver, no_ack=False)
        return self

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        self._delivered += 1
        if self._delivered >= self.depth:
            self._all_delivered.set()
        await self._inbox.put(message)

    async def remove(self, letter: DeadLetter) -> None:
        """Ack ``letter``: it leaves the queue. Only for a message that is safe elsewhere."""
        await letter.message.ack()
        self._removed += 1

    async def __aexit__(self, *exc_info: object) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            if self.depth:
                # Hold all of them before giving any back (see the module docstring).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_delivered.wait(), self._idle_timeout)
            await channel.close()  # every unacked message goes back, in order
            if self._delivered > self._removed:
                with contextlib.suppress(Exception):  # a lost connection: the broker returns them anyway
                    await self._settle(self.depth - self._removed)
        await self._release_lock()

    async def _take_lock(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                await channel.declare_queue(topology.OPS_LOCK_QUEUE, exclusive=True, auto_delete=True)
            except aiormq.exceptions.ChannelLockedResource:
                if time.monotonic() >= deadline:
                    raise OpsError(
                        "another flowscribe-ingest dlq command is working on the dead-letter queue"
                        f" (it holds {topology.OPS_LOCK_QUEUE}); run this one when it has finished"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            self._lock = channel
            return

    async def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None and not lock.is_closed:
            with contextlib.suppress(Exception):  # else it goes with the connection
                await lock.queue_delete(topology.OPS_LOCK_QUEUE)
                await lock.close()

    async def _settle(self, expected: int) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while time.monotonic() < deadline:
                queue = await channel.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
                if (queue.declaration_result.message_count or 0) >= expected:
                    return
                await asyncio.sleep(0.02)
            # A consumer other than these commands holds some: nothing to wait for.
        finally:
            await channel.close()

    async def letters(self) -> AsyncIterator[DeadLetter]:
        """Every message that was ready on entry, in queue order.

        Stops early only if deliveries stop coming (a consumer other than
        these commands holds the rest): what it did not see is then untouched.
        """
        for position in range(1, self.depth + 1):
            try:
                message = await asyncio.wait_for(self._inbox.get(), self._idle_timeout)
            except TimeoutError:
                return
            yield DeadLetter.of(position, message)

    async def select(self, selector: Selector) -> AsyncIterator[DeadLetter]:
        """The letters ``selector`` chooses, in queue order, at most ``selector.limit``."""
        taken = 0
        if selector.limit == 0:
            return
        async for letter in self.letters():
            if selector.matches(letter):
                yield letter
                taken += 1
                if selector.limit is not None and taken >= selector.limit:
                    return
