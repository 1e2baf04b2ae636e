"""Reading the dead-letter queue without changing it (one DeadLetter, ops.letters, per message).

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
import time
from collections.abc import AsyncIterator

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from ops.errors import OpsError
from ops.letters import DeadLetter
from ops.selection import Selector
from schemas import topology

# AMQP's prefetch count is 16 bits; 0 means no limit.
MAX_PREFETCH = 65535
# How long leaving waits for the broker to show the returned messages as ready.
SETTLE_TIMEOUT = 10.0
# How long a command waits for another one to finish reading.
LOCK_WAIT = 5.0


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
