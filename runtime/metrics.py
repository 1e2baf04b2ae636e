"""Prometheus plumbing every process shares: a registry per process, buckets, ``/metrics``'s handler.

What each process counts lives with it: gateway.metrics, worker.metrics.

Each process (each app or worker in the tests) has its own registry rather than
prometheus_client's global one: two workers in one test process would
otherwise count into each other, and registering a metric twice raises.

Label values are bounded by construction: a status code, an outcome, a table
name. Never a path (the callback token is in it), a message id or an analysis
id: those go to the logs, where one line per callback carries them.
"""

from __future__ import annotations

import os

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, multiprocess

# Prometheus ignores the `_created` series by default; they would only double
# what every scrape carries.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

PREFIX = "flowscribe_"

# Seconds. Publishing is a confirmed round trip to the broker (FLOWSCRIBE_PUBLISH_TIMEOUT, 5 s
# by default, is the last bucket that matters); a batch write is one transaction.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from the gateway's receipt to the commit: milliseconds when all is well,
# minutes to hours behind a backlog, an outage or a retry queue (up to 10 min per attempt).
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)



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
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
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
