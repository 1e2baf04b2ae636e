"""Prometheus metrics: what the gateway and the worker count, and ``/metrics`` to read it.

Each process (each app or worker in the tests) has its own registry rather than
prometheus_client's global one: two workers in one test process would
otherwise count into each other, and registering a metric twice raises.

Label values are bounded by construction: a status code, an outcome, a table
name. Never a path (the callback token is in it), a message id or an analysis
id: those go to the logs, where one line per callback carries them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

# Prometheus ignores the `_created` series by default; they would only double
# what every scrape carries.
prometheus_client.disable_created_metrics()

PREFIX = "flowscribe_"

# Every outcome a consumed message can have, so that each series exists (at 0)
# from the first scrape: rate() and alerts need a series before its first event.
OUTCOMES = (
    "ingested", "duplicate", "superseded", "job_failed",  # committed (store.batch.Outcome)
    "redelivered",  # already stored: acked, nothing written
    "dead_lettered", "retried",  # sent to the dead-letter queue / a retry queue
)

# Seconds. Publishing is a confirmed round trip to the broker (FLOWSCRIBE_PUBLISH_TIMEOUT, 5 s
# by default, is the last bucket that matters); a batch write is one transaction.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from the gateway's receipt to the commit: milliseconds when all is well,
# minutes to hours behind a backlog, an outage or a retry queue (up to 10 min per attempt).
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def new_registry() -> CollectorRegistry:
    """A registry with the process's own CPU, memory, file descriptor and GC metrics."""
    registry = CollectorRegistry(auto_describe=True)
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


# Set (to an empty directory) by gateway.processes before it forks the gateway's
# processes and before any of them imports prometheus_client: each process then
# keeps its counts in files there, and /metrics, whichever process answers,
# serves the sum over all of them (prometheus_client's multiprocess mode).
SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_across_processes() -> bool:
    return bool(os.environ.get(SHARED_DIR_ENV))


def _all_processes() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """An aiohttp handler serving ``registry`` in Prometheus' text format (or, when
    counts are shared across processes, the sum of every process's metrics; the
    per-process CPU/memory/GC series are left out then: they would describe
    whichever process happened to answer)."""

    async def serve_metrics(request: web.Request) -> web.Response:
        served = _all_processes() if shared_across_processes() else registry
        return web.Response(
            body=prometheus_client.generate_latest(served),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    return serve_metrics


class GatewayMetrics:
    """What the gateway counts: callback answers by status, publish latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.callbacks = Counter(
            PREFIX + "callbacks_received", "Callback requests answered, by HTTP status.",
            ["status"], registry=self.registry,
        )
        self.publish_seconds = Histogram(
            PREFIX + "publish_seconds",
            "Time to publish a callback and get the broker's confirm (result: confirmed or failed).",
            ["result"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        for result in ("confirmed", "failed"):
            self.publish_seconds.labels(result)

    def count_responses(self, path_prefix: str) -> Middleware:
        """Middleware counting every answer to a request under ``path_prefix``, by status only."""

        @web.middleware
        async def count_callback_statuses(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith(path_prefix):
                return await handler(request)
            try:
                response = await handler(request)
            except web.HTTPException as e:
                self.callbacks.labels(str(e.status)).inc()
                raise
            self.callbacks.labels(str(response.status)).inc()
            return response

        return count_callback_statuses

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Time the block as one publish: ``failed`` if it raises, else ``confirmed``."""
        started = time.perf_counter()
        result = "failed"
        try:
            yield
            result = "confirmed"
        finally:
            self.publish_seconds.labels(result).observe(time.perf_counter() - started)


class _Landed(Protocol):
    """What WorkerMetrics reads of a landed callback (store.rows.Callback)."""

    id: Any
    received_at: datetime.datetime
    reprocess: bool


class _Result(Protocol):
    """What WorkerMetrics reads of a committed batch (store.batch.BatchResult)."""

    outcomes: Mapping[Any, Any]
    rows: Mapping[str, int]


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

    def landed(self, callbacks: Iterable[_Landed], result: _Result, seconds: float) -> None:
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
