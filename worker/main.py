"""A worker put together: its database pool, its broker session, its HTTP server, its loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from runtime.amqp import BrokerSession
from runtime.settings import Settings
from schemas import topology
from store.connection import create_pool
from worker.consumer import WRITES_IN_FLIGHT, Worker
from worker.drift_log import drift_log
from worker.http import Readiness, serving

log = logging.getLogger("worker")


async def run_worker(
    settings: Settings, stop: asyncio.Event, *, started: Callable[[Worker], object] | None = None
) -> Worker:
    """Run one worker until ``stop`` is set; returns it (with its counters) once stopped.

    ``started`` is called with the worker once it serves HTTP (``worker.http_port``)
    and consumes: how tests and tools learn its port without reading its log.
    """
    async with create_pool(
        settings.database_url,
        min_size=0,
        max_size=WRITES_IN_FLIGHT + 1,  # one spare for the readiness probe
        command_timeout=60,
        # asyncpg prepares every statement; after five runs PostgreSQL may switch
        # to a generic plan chosen while the tables were small (sequential scans
        # for `= ANY($1)` look-ups), and keep it as they grow. Planning each run
        # costs little next to a batch and measured 1.4x faster on growing tables.
        # No JIT: the analytics summaries' estimates pass jit_above_cost once the
        # tables hold tens of thousands of analyses, and PostgreSQL then compiled
        # each batch's statements afresh: 195 ms of a 240 ms summarise (auto_explain).
        server_settings={"plan_cache_mode": "force_custom_plan", "jit": "off"},
    ) as pool:
        worker = Worker(settings, pool)
        # Around the broker session: the last sightings are flushed after the last batch.
        async with drift_log(pool, worker.metrics.registry, settings.drift_sample_rate) as drift:
            worker.use_drift_log(drift)
            async with BrokerSession(
                settings.amqp_url, "worker", declare=topology.declare, prefetch=settings.worker_prefetch,
                on_ready=worker.attach,
            ) as broker:
                worker.use_broker(broker)
                async with serving(settings, worker.metrics.registry, Readiness(broker, pool)) as port:
                    worker.http_port = port
                    if started is not None:
                        started(worker)
                    log.info("worker started", extra={"batch_size": settings.batch_size,
                                                      "prefetch": settings.worker_prefetch})
                    await worker.run(stop)
    return worker
