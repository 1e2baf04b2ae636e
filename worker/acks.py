"""Settle a committed batch with one ``basic.ack(multiple=True)`` when that is safe.

An ack per message costs RabbitMQ more than anything else the worker asks of
it (bench/: with small callbacks the broker spent ~30% of a core on acks, ~4%
with one ack per batch). But ``multiple=True`` settles *every* outstanding
delivery up to its tag on the channel, so it may only be sent when every lower
tag is settled already: acked, rejected, moved to a retry or dead-letter queue,
or part of the batch being acked. A batch still being written, or messages left
for redelivery at shutdown, hold lower tags; then the batch is acked message
by message, as before.

One window per channel: delivery tags count per channel, and a message from a
channel that has since closed can no longer be settled at all (the broker has
already returned it to the queue).
"""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage


class AckWindow:
    """The deliveries of one channel that the worker has not settled yet."""

    def __init__(self) -> None:
        self._pending: dict[int, AbstractIncomingMessage] = {}  # by delivery tag

    def delivered(self, message: AbstractIncomingMessage) -> None:
        self._pending[_tag(message)] = message

    def owns(self, message: AbstractIncomingMessage) -> bool:
        """Delivered on this window's channel and not settled yet."""
        return self._pending.get(_tag(message)) is message

    def settled(self, message: AbstractIncomingMessage) -> None:
        """``message`` was acked or rejected on its own (call after the frame was sent)."""
        if self.owns(message):
            del self._pending[_tag(message)]

    def __len__(self) -> int:
        """How many deliveries are still unsettled."""
        return len(self._pending)

    async def ack(self, messages: list[AbstractIncomingMessage]) -> int:
        """Ack ``messages`` (all this window's, unsettled): one frame if nothing older is
        pending. Returns the number of ack frames sent."""
        last = max(messages, key=_tag)
        batch = {_tag(m) for m in messages}
        if all(tag > _tag(last) or tag in batch for tag in self._pending):
            for tag in batch:  # before the frame: nothing may settle them again meanwhile
                del self._pending[tag]
            await last.ack(multiple=True)
            return 1
        for message in sorted(messages, key=_tag):
            await message.ack()
            del self._pending[_tag(message)]
        return len(messages)


def _tag(message: AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None  # consumed with acks: the broker always sets one
    return tag
