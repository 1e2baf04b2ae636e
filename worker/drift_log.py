"""Record schema drift: sample callbacks, keep what ``schemas.drift`` finds, write it to the database.

Which callbacks are checked: each with probability ``FLOWSCRIBE_DRIFT_SAMPLE_RATE``
(reprocessed ones never: they were counted when they arrived). A new vendor
field shows up in every callback from the day it is deployed, so a small
sample finds it within seconds at any real traffic, at a fraction of the cost
(``bench drift``).

Where it is written: ``flowscribe.schema_drift``, one row per (object, field),
by an upsert of its own, *after* and apart from the batch transactions. In the
batch transaction it would hold the row lock of a drift row until that batch
commits, and every worker sees the same new field: all workers' batches would
queue on that one row, and a failed upsert would fail a batch of callbacks
that are fine. Apart, sightings are merged in memory and flushed by one short
statement (at most one a second, keys in a fixed order, so two workers'
flushes never deadlock); a flush that fails is logged and retried with the
next, and what a crash loses is part of a sample.

The metric ``flowscribe_schema_drift_callbacks_total{object, field}`` counts the
same sightings. Its labels come from the vendor's body, so their number is
capped: the first ``MAX_LABELLED`` distinct pairs a worker sees get their own
series, later ones are counted under ``object="(other)", field="(other)"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from schemas.drift import Unknown, unknown_fields
from store import drift as drift_table
from store.drift import Sighting

log = logging.getLogger("worker")

MAX_LABELLED = 50  # distinct (object, field) label pairs per worker; the rest share OTHER
OTHER = "(other)"
MAX_PENDING = 1000  # distinct pairs held between flushes (a flush normally empties it within a second)
FLUSH_INTERVAL = 1.0  # seconds: at most one upsert a second per worker


class DriftLog:
    """Samples callbacks, holds their sightings, and flushes them (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, registry: CollectorRegistry, sample_rate: float) -> None:
        self._pool = pool
        self._rate = sample_rate
        self._random = random.Random()
        self._pending: dict[tuple[str, str], Sighting] = {}
        self._wake = asyncio.Event()
        self._labelled: set[tuple[str, str]] = set()
        self._announced: set[tuple[str, str]] = set()
        self.callbacks = Counter(
            "flowscribe_schema_drift_callbacks",
            "Sampled callbacks carrying a field or object the payload Structs do not know, by object and"
            f" field (at most {MAX_LABELLED} pairs per worker; the rest under {OTHER}).",
            ["object", "field"], registry=registry,
        )
        self.callbacks.labels(OTHER, OTHER)  # the family exists (at 0) from the first scrape, for rules
        self.checked = Counter(
            "flowscribe_schema_drift_checked_callbacks", "Callbacks checked for unknown fields (the sample).",
            registry=registry,
        )

    def check(self, callback_id: uuid.UUID, received_at: datetime.datetime, body: bytes,
              content_type: str | None) -> Unknown:
        """Check a decoded callback's body if it is sampled; what it found (empty if not sampled)."""
        if self._rate <= 0 or self._random.random() >= self._rate:
            return {}
        self.checked.inc()
        try:
            found = unknown_fields(body, content_type)
        except Exception:  # a sample is never worth a callback: it decoded, so it lands
            log.exception("schema drift check failed", extra={"message_id": str(callback_id)})
            return {}
        for (obj, field), kind in found.items():
            self._count(obj, field)
            self._hold((obj, field), Sighting(kind, received_at, received_at, 1, callback_id))
        if found:
            self._wake.set()
        return found

    def _count(self, obj: str, field: str) -> None:
        key = (obj, field)
        if key not in self._labelled and len(self._labelled) >= MAX_LABELLED:
            key = (OTHER, OTHER)
        else:
            self._labelled.add(key)
        self.callbacks.labels(*key).inc()

    def _hold(self, key: tuple[str, str], sighting: Sighting) -> None:
        held = self._pending.get(key)
        if held is not None:
            held.merge(sighting)
        elif len(self._pending) < MAX_PENDING:
            self._pending[key] = sighting

    async def flush(self) -> None:
        """Write what is held; on failure keep it for the next flush."""
        if not self._pending:
            return
        taken, self._pending = self._pending, {}
        keys = sorted(taken)
        try:
            async with self._pool.acquire(timeout=10) as conn:
                await drift_table.record(conn, taken)
        except BaseException as e:
            for key, sighting in taken.items():
                self._hold(key, sighting)
            if not isinstance(e, Exception):
                raise  # cancelled (the worker stops): what was taken is held again for the last flush
            # Drift is reported later, never at a callback's expense.
            log.warning("schema drift not recorded yet; retrying with the next flush",
                        extra={"fields": len(keys), "reason": f"{type(e).__name__}: {e}"})
            return
        new = [key for key in keys if key not in self._announced]
        if new:  # once per field and worker, not once a second while it keeps coming
            self._announced.update(new[: MAX_PENDING - len(self._announced)])
            log.warning("schema drift: callbacks carry fields the payload Structs do not know",
                        extra={"fields": [f"{obj}.{field}" for obj, field in new]})

    async def _flush_continually(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()
            await asyncio.sleep(FLUSH_INTERVAL)
            if self._pending:
                self._wake.set()


@contextlib.asynccontextmanager
async def drift_log(pool: asyncpg.Pool, registry: CollectorRegistry, sample_rate: float) -> AsyncIterator[DriftLog]:
    """A DriftLog flushing in the background while inside; the last sightings are flushed on exit."""
    drift = DriftLog(pool, registry, sample_rate)
    flusher = asyncio.create_task(drift._flush_continually())
    try:
        yield drift
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await drift.flush()
