"""The worker's small HTTP server: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (can work).

A worker takes no requests; this port exists for Prometheus and for the
orchestrator's probes. Ready means both ends are usable: the broker session
has a channel, and the database answered recently (a ``SELECT 1`` made here,
whose success counts for ``DATABASE_FRESH_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from runtime.amqp import BrokerSession
from runtime.probes import HEALTH_PATH, METRICS_PATH, READY_PATH, add_probes
from runtime.serving import listening, listening_socket
from runtime.settings import Settings

log = logging.getLogger("worker")

__all__ = ["HEALTH_PATH", "METRICS_PATH", "READY_PATH", "Readiness", "create_app", "serving"]

# How long one answer from the database counts as "reachable" (probes and
# scrapes every few seconds must not each cost a query), and how long a probe
# may take: less than the timeoutSeconds of the readiness probe in
# deploy/k8s/worker.yaml, so that a slow database reads as "not ready", not as
# a probe timeout.
DATABASE_FRESH_SECONDS = 10.0
DATABASE_PROBE_TIMEOUT = 2.0


class Readiness:
    """Whether the worker can take work now: broker session ready and database reachable."""

    def __init__(self, broker: BrokerSession[Any], pool: asyncpg.Pool) -> None:
        self._broker = broker
        self._pool = pool
        self._answered_at = float("-inf")
        self._probe_lock = asyncio.Lock()  # one probe at a time, however many requests

    async def check(self) -> str | None:
        """``None`` when ready, else why not."""
        if not self._broker.ready:
            return "broker not connected"
        if not await self._database_reachable():
            return "database not reachable"
        return None

    async def _database_reachable(self) -> bool:
        async with self._probe_lock:
            if time.monotonic() - self._answered_at < DATABASE_FRESH_SECONDS:
                return True
            try:
                async with asyncio.timeout(DATABASE_PROBE_TIMEOUT):
                    async with self._pool.acquire() as conn:
                        await conn.fetchval("SELECT 1")
            except Exception:  # noqa: BLE001 - any failure means: not reachable now
                return False
            self._answered_at = time.monotonic()
            return True


def create_app(registry: CollectorRegistry, readiness: Readiness) -> web.Application:
    async def not_ready() -> str | None:
        return await readiness.check()

    app = web.Application()
    add_probes(app, registry, not_ready)
    return app


@contextlib.asynccontextmanager
async def serving(settings: Settings, registry: CollectorRegistry, readiness: Readiness) -> AsyncIterator[int]:
    """Serve on FLOWSCRIBE_WORKER_HTTP_HOST/PORT while inside; yields the bound port.

    A port that cannot be bound fails the worker's start: a worker whose probes
    nobody can reach would be restarted in a loop by its orchestrator anyway.
    """
    # No access log: probes and scrapes every few seconds would drown the worker's own lines.
    runner = web.AppRunner(create_app(registry, readiness), access_log=None, handle_signals=False)
    sock = listening_socket(settings.worker_http_host, settings.worker_http_port)
    async with listening(runner, sock, logger=log, event="worker http listening") as port:
        yield port
