"""Bounds on what callers can make the gateway hold: requests per source, body bytes in memory."""

from __future__ import annotations

import collections
import contextlib
import math
import time
from collections.abc import Callable, Hashable, Iterator

# Most sources the rate limiter remembers. Past it, the least recently seen
# source is forgotten (its next request starts with a full bucket): memory
# stays bounded even under a flood from many addresses, at the price of
# letting such a flood through the limiter - which then is the wrong tool.
MAX_SOURCES = 100_000


class RateLimiter:
    """A token bucket per source: ``burst`` requests at once, then ``rate`` per second."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate, self._burst = rate, float(burst)
        self._max_sources = max_sources
        self._clock = clock
        # A bucket untouched this long is full again: forgetting it changes nothing.
        self._refill_time = burst / rate
        # Least recently used first; values are (tokens, time of last use).
        self._buckets: collections.OrderedDict[Hashable, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, source: Hashable) -> float:
        """0 if ``source`` may make a request now (and count it), else seconds until it may."""
        now = self._clock()
        self._evict(now)
        tokens, last = self._buckets.pop(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self._rate
        self._buckets[source] = (tokens, now)
        return wait

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            _, last = buckets[next(iter(buckets))]
            if now - last < self._refill_time and len(buckets) < self._max_sources:
                return
            buckets.popitem(last=False)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


class OverBudget(Exception):
    """Holding these bytes would take the gateway past its in-flight byte budget."""


class InflightBudget:
    """How many body bytes all requests together hold in memory; a hard ceiling on it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # highest ``used`` seen (tests, diagnostics)

    @property
    def available(self) -> int:
        return self.limit - self.used

    @contextlib.contextmanager
    def hold(self) -> Iterator[Holding]:
        """A holding that grows as a request buffers its body; released on exit, whatever happens."""
        holding = Holding(self)
        try:
            yield holding
        finally:
            self.used -= holding.bytes
            holding.bytes = 0


class Holding:
    """The bytes one request holds against an ``InflightBudget``."""

    def __init__(self, budget: InflightBudget) -> None:
        self._budget = budget
        self.bytes = 0

    def take(self, n: int) -> None:
        """Hold ``n`` more bytes, or raise OverBudget (holding nothing more)."""
        budget = self._budget
        if budget.used + n > budget.limit:
            raise OverBudget(f"{budget.used} + {n} bytes > {budget.limit}")
        budget.used += n
        self.bytes += n
        budget.peak = max(budget.peak, budget.used)
