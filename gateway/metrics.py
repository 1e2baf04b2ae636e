"""What the gateway counts: callback answers by status, publish latency, publishes held."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runtime.metrics import LATENCY_BUCKETS, PREFIX, new_registry

# How long a held publish waited for its outcome: up to the longest hold one would set.
HOLD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0)


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
        # gateway.publish_hold: publishes the broker did not confirm at first, held and tried again.
        self.publishes_held = Gauge(
            PREFIX + "publishes_held", "Callback publishes being held now, waiting to be published again.",
            registry=self.registry,
        )
        self.publish_hold_seconds = Histogram(
            PREFIX + "publish_hold_seconds",
            "How long a held publish was held, by how it ended: confirmed (202), or expired (503)."
            " Its _count is the number of held publishes; _count{result=\"expired\"} the refusals they became.",
            ["result"], buckets=HOLD_BUCKETS, registry=self.registry,
        )
        for result in ("confirmed", "expired"):
            self.publish_hold_seconds.labels(result)
        self.broker_renewals = Counter(
            PREFIX + "broker_connection_renewals",
            "Broker connections given up for a new one because the broker kept refusing their publishes.",
            registry=self.registry,
        )

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
