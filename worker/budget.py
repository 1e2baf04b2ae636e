"""A worker's own bound on what it holds: bytes of callback bodies, and decoded rows.

RabbitMQ counts a consumer's credit in messages (``basic.qos`` prefetch count;
it ignores prefetch size), so with the default prefetch of 300 a flood of
16 MiB callbacks took a worker to gigabytes and an out-of-memory kill, which
hands the same messages to the next worker. The worker keeps its own account:

- **Body bytes held**: bodies delivered and not yet finished with. A delivery
  that would take the worker past its limit is handed straight back to the
  queue (``admit`` says no), unless the worker holds nothing: a callback larger
  than the limit then lands on its own. The credit the worker consumes with
  (``prefetch``) is as many of the largest recent bodies as fit in what is left,
  at most the configured prefetch: it starts out assuming bodies of the largest
  size the gateway accepts and widens once it has seen smaller ones (``resize``
  says when the consumer should be started again with another credit).
- **Decoded rows held**: rows of the batch being decoded and of the batches
  being written. A batch is closed once its rows reach the limit (a huge
  callback is written on its own), and the next one is not decoded while the
  batches in flight hold the limit.

Ordinary callbacks never reach either limit (a full prefetch of typical
callbacks is well inside both), so they flow as before.
"""

from __future__ import annotations

from collections import deque

__all__ = ["BodyBudget", "RowBudget"]


class BodyBudget:
    """Bytes of bodies held; which deliveries to take, and with what credit to consume."""

    def __init__(self, limit: int, most_prefetch: int, largest_body: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most ever held: in the stop log line, and for tests
        self.handed_back = 0  # deliveries returned to the queue for want of room
        self._most = most_prefetch
        self._assumed = max(1, largest_body)  # until deliveries show otherwise
        self._recent: deque[int] = deque(maxlen=most_prefetch)  # sizes of the latest deliveries
        self._largest = 0  # max(self._recent), kept up to date cheaply

    @property
    def largest_recent(self) -> int:
        """The largest of the latest deliveries' bodies (the largest accepted, before any)."""
        return self._largest if self._recent else self._assumed

    def admit(self, size: int) -> bool:
        """Take a delivered body of ``size`` bytes into the account, or say it does not fit."""
        self._observe(size)
        if self.held and self.held + size > self.limit:
            self.handed_back += 1
            return False
        self.held += size
        self.peak = max(self.peak, self.held)
        return True

    def release(self, size: int) -> None:
        """A body taken with ``admit`` is finished with (landed, moved, or left to redelivery)."""
        self.held -= size

    def prefetch(self) -> int:
        """The credit to consume with now: 0 means wait until something is released."""
        room = (self.limit - self.held) // self.largest_recent
        return min(self._most, max(room, 0 if self.held else 1))

    def resize(self, current: int, seen: int) -> bool:
        """Whether a consumer with credit ``current``, that has had ``seen`` deliveries, should
        be started again: its credit no longer fits the bodies coming (narrow now), or a full
        round of deliveries showed room for half as many again, or for the most allowed (widen)."""
        fitting = min(self._most, max(1, self.limit // self.largest_recent))
        if fitting < current:
            return True
        # Widen by at least half again (or to the most allowed): restarts stay few.
        wider = min(fitting, self.prefetch())
        return seen >= current and wider > current and wider >= min(current + (current + 1) // 2, self._most)

    def _observe(self, size: int) -> None:
        if len(self._recent) == self._recent.maxlen and self._recent[0] == self._largest:
            self._recent.append(size)  # the largest leaves the window: find the next one
            self._largest = max(self._recent)
        else:
            self._recent.append(size)
            self._largest = max(self._largest, size)


class RowBudget:
    """Decoded rows held by the batch being decoded and the batches being written."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0

    def full(self) -> bool:
        return self.held >= self.limit

    def take(self, rows: int) -> None:
        self.held += rows
        self.peak = max(self.peak, self.held)

    def release(self, rows: int) -> None:
        self.held -= rows
