"""The queues as the Overview shows them: depths and consumers, and a glance at the newest dead letters.

Depths come from passive declares on the console's one broker session (cheap,
no message touched). The newest dead letters can only be seen by reading the
dead-letter queue, which ops does under its lock and which adds one to every
message's delivery counter (see ops.dead_letters); so the glance is re-read only
when the queue's depth has changed, at most once per ``MIN_INTERVAL``, and the
Dead letters page refreshes it for free whenever it reads the queue anyway.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import time
from typing import Any

from ops import connect
from ops.dead_letters import DeadLetterQueue
from ops.errors import OpsError
from ops.selection import Selector
from runtime.amqp import BrokerSession, BrokerUnavailable
from runtime.settings import Settings
from schemas import topology
from schemas.topology import Topology

NEWEST = 5
MIN_INTERVAL = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class QueueState:
    name: str
    role: str
    ready: int
    consumers: int


def watched() -> list[tuple[str, str]]:
    return [
        (topology.CALLBACK_QUEUE, "callbacks"),
        *((topology.retry_queue(d), f"retry after {d} s") for d in topology.RETRY_DELAYS_SECONDS),
        (topology.DEAD_LETTER_QUEUE, "dead letters"),
    ]


async def depths(broker: BrokerSession[Topology]) -> list[QueueState]:
    """Ready messages and consumers of every queue of ours; BrokerUnavailable if not connected."""
    channel, _ = broker.usable()
    states = []
    for name, role in watched():
        declared = await asyncio.wait_for(channel.declare_queue(name, passive=True), 5)
        result = declared.declaration_result
        states.append(QueueState(name, role, result.message_count or 0, result.consumer_count or 0))
    return states


class DeadLetterGlance:
    """The newest few dead letters, as last read."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._last_try = 0.0
        self.depth: int | None = None
        self.newest: list[dict[str, Any]] = []
        self.read_at: datetime.datetime | None = None
        self.error: str | None = None

    def remember(self, depth: int, newest: list[dict[str, Any]]) -> None:
        """What a full read of the queue just saw (``newest``: summaries, newest first)."""
        self.depth, self.newest = depth, newest[:NEWEST]
        self.read_at, self.error = datetime.datetime.now(datetime.UTC), None

    async def refresh(self, depth: int) -> None:
        """Read the queue again if ``depth`` differs from what the last read saw (rate-limited)."""
        if depth == self.depth or self._lock.locked():
            return
        if time.monotonic() - self._last_try < MIN_INTERVAL and self.read_at is not None:
            return
        async with self._lock:
            self._last_try = time.monotonic()
            newest: collections.deque[dict[str, Any]] = collections.deque(maxlen=NEWEST)
            try:
                async with connect.broker(self._settings) as (connection, _channel, _declared):
                    async with DeadLetterQueue(connection) as queue:
                        async for letter in queue.select(Selector()):
                            newest.append(letter.summary())
                        seen = queue.depth
            except (OpsError, BrokerUnavailable) as e:
                self.error = str(e)
                return
            except Exception as e:  # noqa: BLE001 - the overview says so and goes on
                self.error = f"{type(e).__name__}: {e}"
                return
            self.remember(seen, list(reversed(newest)))
