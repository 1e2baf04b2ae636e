"""Land a batch in PostgreSQL: hold it while the database is away, retry collisions, find the refused message.

- A database that cannot be reached is nobody's fault: the batch is held and
  retried with growing pauses (up to FLOWSCRIBE_DATABASE_RETRY_MAX_DELAY) until
  the database is back, or until the worker's shutdown deadline.
- Two transactions that collided are run again at once a few times; a
  collision that persists is the caller's to handle per message (``refused``
  with ``Fault.CONFLICT``: the worker's retry queues).
- A batch the database refuses because of one message's data is split in
  halves until that message stands alone (``refused`` with ``Fault.DATA``);
  the rest commits.

What committed is handed to ``committed`` (the worker acks it) as soon as it
has, half by half: a bisection does not hold back the halves that are fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from runtime.errors import describe
from runtime.settings import Settings
from schemas.message import Callback
from store.batch import BatchResult, write_batch
from worker.failures import Fault, classify
from worker.metrics import WorkerMetrics
from worker.tracing import for_worker

log = logging.getLogger("worker")

# How often a batch is re-run at once after colliding with another transaction
# before its messages go to the retry queues (each attempt counted per message).
MAX_CONFLICT_RETRIES = 3
_UNTRACED = contextlib.nullcontext()

# (the callbacks that committed, the store's result, perf_counter() when their write began)
Committed = Callable[[list[Callback], BatchResult, float], Awaitable[None]]
# (the one callback the database would not take, whose fault that was, the error)
Refused = Callable[[Callback, Fault, BaseException], Awaitable[None]]


class Landing:
    """Writes batches on ``pool``, one transaction each (store.batch.write_batch); see the module docstring."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: WorkerMetrics) -> None:
        self._settings = settings
        self._pool = pool
        self._metrics = metrics
        self._tracing = for_worker()  # None while tracing is off

    async def land(
        self,
        callbacks: list[Callback],
        *,
        committed: Committed,
        refused: Refused,
        give_up_at: Callable[[], float],
    ) -> None:
        """Write ``callbacks``; while the database is unreachable, wait until ``give_up_at()`` (monotonic)."""
        delay = 0.1
        conflicts = 0
        while True:
            started = time.perf_counter()
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    try:
                        with self._tracing.statements(conn) if self._tracing is not None else _UNTRACED:
                            result = await write_batch(conn, callbacks)
                    except Exception as e:
                        if classify(e) is Fault.UNAVAILABLE:
                            # A connection that timed out, lost its socket mid-statement
                            # or finds itself on a read-only server is never handed out again.
                            conn.terminate()
                        raise
            except Exception as e:  # noqa: BLE001 - classified below, nothing escapes
                fault = classify(e)
                if fault is Fault.UNAVAILABLE:
                    # After a failover every pooled connection may be to the old primary
                    # (dead, or back as a read-only standby): replace them all, so the
                    # retry connects afresh to whichever host is the primary now.
                    await self._pool.expire_connections()
                    self._metrics.database_unavailable()
                    deadline = give_up_at()
                    if time.monotonic() >= deadline:
                        log.warning("database unavailable at shutdown: leaving batch to redelivery",
                                    extra={"messages": len(callbacks)})
                        return
                    log.warning("database unavailable: holding batch",
                                extra={"messages": len(callbacks), "reason": describe(e), "retry_in": delay})
                    await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    delay = min(delay * 2, self._settings.database_retry_max_delay)
                    continue
                if fault is Fault.CONFLICT and conflicts < MAX_CONFLICT_RETRIES:
                    conflicts += 1
                    await asyncio.sleep(0.05 * conflicts)
                    continue
                if len(callbacks) == 1:
                    await refused(callbacks[0], fault, e)
                    return
                # Find the message the database refused: split and land each half.
                half = len(callbacks) // 2
                await self.land(callbacks[:half], committed=committed, refused=refused, give_up_at=give_up_at)
                await self.land(callbacks[half:], committed=committed, refused=refused, give_up_at=give_up_at)
                return
            break
        self._metrics.landed(callbacks, result, time.perf_counter() - started)
        await committed(callbacks, result, started)
