"""What a worker counts: outcomes, rows, batches, lag, and a batch held for the database."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runtime.metrics import BATCH_SIZE_BUCKETS, LAG_BUCKETS, LATENCY_BUCKETS, PREFIX, new_registry
from schemas.message import Callback
from store.batch import BatchResult
from store.outcomes import Outcome

# Every outcome a consumed message can have, so that each series exists (at 0)
# from the first scrape: rate() and alerts need a series before its first event.
OUTCOMES = (
    *(outcome.value for outcome in Outcome),  # committed, or redelivered: already stored, acked
    "dead_lettered", "retried",  # sent to the dead-letter queue / a retry queue
)


class WorkerMetrics:
    """What a worker counts: outcomes, rows, batches, lag, and a batch held for the database."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.consumed = Counter(
            PREFIX + "messages_consumed", "Callback messages a worker finished with, by outcome.",
            ["outcome"], registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.consumed.labels(outcome)
        self.rows = Counter(
            PREFIX + "rows_written", "Rows written to PostgreSQL, by table.",
            ["table"], registry=self.registry,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size", "Callbacks per committed transaction.",
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry,
        )
        self.write_seconds = Histogram(
            PREFIX + "batch_write_seconds", "Time to write and commit one batch.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.lag_seconds = Histogram(
            PREFIX + "end_to_end_lag_seconds",
            "From the gateway's receipt of a callback to the commit of its rows"
            " (redeliveries and reprocessing excluded).",
            buckets=LAG_BUCKETS, registry=self.registry,
        )
        self.batches_held = Gauge(
            PREFIX + "batches_held",
            "1 while the worker holds its batches because the database is unreachable, else 0.",
            registry=self.registry,
        )

    def landed(self, callbacks: Iterable[Callback], result: BatchResult, seconds: float) -> None:
        """A batch committed: its outcomes, rows, size, write time and each callback's lag."""
        committed_at = datetime.datetime.now(datetime.UTC)
        size = 0
        for callback in callbacks:
            size += 1
            outcome = str(result.outcomes[callback.id])  # a StrEnum: its value
            self.consumed.labels(outcome).inc()
            if outcome != "redelivered" and not callback.reprocess:
                self.lag_seconds.observe(max(0.0, (committed_at - callback.received_at).total_seconds()))
        for table, count in result.rows.items():
            self.rows.labels(table).inc(count)
        self.batch_size.observe(size)
        self.write_seconds.observe(seconds)
        self._released()

    def count(self, outcome: str) -> None:
        """One message finished without a commit: dead_lettered, retried or redelivered."""
        self.consumed.labels(outcome).inc()
        self._released()

    def database_unavailable(self) -> None:
        """The worker holds its batch until the database is back."""
        self.batches_held.set(1)

    def _released(self) -> None:
        # Once a worker finishes with any message, the database answered: it no
        # longer holds batches for it.
        self.batches_held.set(0)
