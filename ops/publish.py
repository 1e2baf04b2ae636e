"""Publishing as ops do it: one message at a time (runtime.messages.publish_confirmed), at a bounded rate."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Spaces actions at most ``rate`` per second (``None``: as fast as confirms come back).

    A replay of many thousand messages should not starve the callbacks that
    keep arriving; ``--rate`` lets the operator trickle it.
    """

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if now < self._next:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval
