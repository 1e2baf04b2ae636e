"""``/healthz`` (alive), ``/readyz`` (can work) and ``/metrics``: the endpoints every process serves.

The gateway serves them beside its callback route, the worker on a small server
of its own (worker.http); what "ready" means is each process's to say.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from runtime.metrics import metrics_handler

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"  # Prometheus; keep it off the public side of a reverse proxy

# None when ready, else why not (said in the 503's body).
NotReady = Callable[[], Awaitable[str | None]]


def add_probes(
    app: web.Application, registry: CollectorRegistry, not_ready: NotReady, *, retry_after: int | None = None
) -> None:
    """Route the three endpoints on ``app``; a 503 from ``/readyz`` carries ``Retry-After`` if given."""
    unready_headers = {"Retry-After": str(retry_after)} if retry_after is not None else None

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reason = await not_ready()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"error": reason}, status=503, headers=unready_headers)

    app.router.add_get(HEALTH_PATH, healthz)
    app.router.add_get(READY_PATH, readyz)
    app.router.add_get(METRICS_PATH, metrics_handler(registry))
