"""Transactions that wait for a lock only briefly, then let go and try again.

Why: PostgreSQL queues lock requests. A migration's ``ALTER TABLE`` waiting behind a long
transaction (an analyst's query, a batch in flight) makes every later request on that table
queue behind it, so the workers' batches would stall for as long as the migration waits. With
a bounded ``lock_timeout`` the migration's transaction gives up the wait, rolls back (it had
done nothing the others can see) and tries again after a pause, during which the queue drains.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from store.connection import Connection

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class LockWait:
    """How long a statement may wait for a lock, and how long to keep trying in all."""

    timeout: float = 0.5  # seconds one statement waits for a lock before the transaction lets go
    first_pause: float = 0.2  # seconds before the first retry; doubled each time, with jitter
    longest_pause: float = 5.0
    give_up_after: float = 600.0  # seconds of retrying before the error is the caller's


BRIEF = LockWait()  # what migrate uses unless told otherwise


class LocksNotGranted(RuntimeError):
    """The locks a transaction needed were held by others for longer than ``give_up_after``."""


async def in_transaction(conn: Connection, what: str, work: Callable[[], Awaitable[T]],
                         wait: LockWait = BRIEF) -> T:
    """Run ``work`` in a transaction whose lock waits are bounded; retry it while they time out.

    ``work`` must be safe to run again: each attempt starts from a rolled-back transaction.
    """
    started = time.monotonic()
    pause = wait.first_pause
    attempt = 1
    while True:
        try:
            async with conn.transaction():
                # SET LOCAL takes no parameter placeholders; the value is our own number.
                await conn.execute(f"SET LOCAL lock_timeout = {max(1, round(wait.timeout * 1000))}")
                return await work()
        except asyncpg.LockNotAvailableError as e:
            waited = time.monotonic() - started
            if waited + pause > wait.give_up_after:
                raise LocksNotGranted(
                    f"{what}: locks still held by others after {attempt} attempts in {waited:.0f} s ({e})"
                ) from None
            log.warning("lock wait timed out; retrying", extra={
                "step": what, "attempt": attempt, "pause_s": round(pause, 3), "lock_timeout_s": wait.timeout})
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # jitter: runners do not retry in step
            pause = min(pause * 2, wait.longest_pause)
            attempt += 1
