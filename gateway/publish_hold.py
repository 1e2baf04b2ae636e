"""Hold a callback the broker did not confirm and publish it again, until confirmed or the hold ends.

Why: Flowscribe never retries a refused callback (its documentation says
nothing of it), so every 503 may be a callback lost for good. A broker cluster
survives a node's death or restart, but for seconds at a time it cannot take a
publish: the connection is gone until the next node answers, or the queue has
no leader and the broker nacks (11-12 s measured after a kill -9), or a confirm
never comes. Each of those passes; so a failed publish is held, with its body
still counted against the in-flight byte budget, and published again - on the
same connection once it is back, or on the next node the broker session moved
to - until the broker confirms it or the hold expires. Only then 503, as
before. Kafka's producer does the same within ``delivery.timeout.ms``.

Every failure is taken as passing: the hold bounds what one that is not costs.

A publish whose confirm was lost with its connection may have reached the
queue: the copy published again carries the same message id and receive time,
and the worker stores a message id once (store.batch: a redelivery).

One log line when the first publish is held and one when none is held any
more (with the counts), whatever the number of callbacks in between: the
metrics count each one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable

import aio_pika

from gateway.metrics import GatewayMetrics
from gateway.publisher import Publish, PublishFailed
from runtime.amqp import BrokerSession
from schemas.topology import Topology

log = logging.getLogger("gateway")

# Pauses between attempts while the broker is connected but does not confirm
# (a queue electing its leader): short at first, as a reconnect often ends it
# at once; never so long that a publish waits much past the broker's return.
FIRST_PAUSE = 0.05
MAX_PAUSE = 0.5
# A connection whose publishes the broker has kept refusing this long, while a
# publish was held all along, is given up for a new one (BrokerSession.renew).
# Long enough that a leader election (nacks for 11-12 s at worst, measured) costs
# at most a couple of reconnects; short against the hold. One held publish asks,
# and a connection younger than this is never given up: one renewal per period.
RENEW_AFTER = 5.0
# Of the shutdown timeout, what is kept for answering once the hold gives up:
# aiohttp cancels handlers still running at the timeout, and a cancelled
# request gets no answer at all, where a 503 at least tells the sender.
SHUTDOWN_MARGIN = 1.0


@dataclasses.dataclass(slots=True)
class Episode:
    """From the first publish held to the moment none is held: what the end-of-episode line says."""

    began: float
    reason: str
    held: int = 0
    confirmed: int = 0
    expired: int = 0
    longest: float = 0.0


class PublishHold:
    """Publishes a callback, holding and publishing it again while the broker does not confirm it."""

    def __init__(
        self,
        publish: Publish,
        *,
        hold_seconds: float,
        attempt_timeout: float,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self.hold_seconds = hold_seconds
        self._attempt_timeout = attempt_timeout
        self._metrics = metrics
        self._clock = clock
        self.held = 0  # publishes held right now
        self._episode: Episode | None = None
        self._stop_by = math.inf  # set at shutdown: no hold outlasts it
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop_within(self, seconds: float) -> None:
        """Shutdown: every hold ends (published, or given up as a 503) within ``seconds``."""
        self._stop_by = min(self._stop_by, self._clock() + max(0.0, seconds - SHUTDOWN_MARGIN))
        self._stopping.set()

    async def publish(self, broker: BrokerSession[Topology], message: aio_pika.Message) -> None:
        """Publish ``message``; return once confirmed, raise PublishFailed once the hold has expired."""
        began = self._clock()
        try:
            await self._publish(broker, message, self._attempt_timeout)
            return
        except PublishFailed as e:
            reason = str(e)
        deadline = min(began + self.hold_seconds, self._stop_by)
        if self._clock() >= deadline:
            self._metrics.publish_hold_seconds.labels("expired").observe(0.0)
            self._count_expired_alone(reason)
            raise PublishFailed(reason)
        self._begin_holding(reason)
        result = "cancelled"
        try:
            await self._publish_until_confirmed(broker, message, reason, began)
            result = "confirmed"
        except PublishFailed:
            result = "expired"
            raise
        finally:
            self._end_holding(result, self._clock() - began)

    async def _publish_until_confirmed(
        self, broker: BrokerSession[Topology], message: aio_pika.Message, reason: str, began: float
    ) -> None:
        pause = FIRST_PAUSE
        while True:
            left = min(began + self.hold_seconds, self._stop_by) - self._clock()
            if left <= 0:
                raise PublishFailed(f"not confirmed within the hold of {self.hold_seconds:g} s: {reason}")
            await self._before_next_attempt(broker, pause, left)
            left = min(began + self.hold_seconds, self._stop_by) - self._clock()
            if left <= 0 or not broker.ready:
                continue  # expired, or shutting down: the loop says which
            try:
                await self._publish(broker, message, min(self._attempt_timeout, left))
                return
            except PublishFailed as e:
                reason = str(e)
            self._renew_if_stuck(broker, reason, began)
            pause = min(pause * 2, MAX_PAUSE)

    def _renew_if_stuck(self, broker: BrokerSession[Topology], reason: str, began: float) -> None:
        """A connection the broker refuses for RENEW_AFTER while up is traded for a new one."""
        if self._clock() - began < RENEW_AFTER or broker.up_for() < RENEW_AFTER:
            return
        if broker.renew(f"publishes refused for {RENEW_AFTER:g} s: {reason}"):
            self._metrics.broker_renewals.inc()
            log.warning(
                "publishes held: the broker keeps refusing this connection; making a new one",
                extra={"reason": reason, "refused_for_s": RENEW_AFTER},
            )

    async def _before_next_attempt(self, broker: BrokerSession[Topology], pause: float, left: float) -> None:
        """``pause`` while connected; else until the broker session is back (it reconnects by
        itself), for at most ``left``. The start of a shutdown (which shortens ``left``) ends
        the wait at once."""
        waits: set[asyncio.Future[object]] = set()
        if not self._stopping.is_set():
            waits.add(asyncio.ensure_future(self._stopping.wait()))
        if broker.ready:
            timeout: float | None = min(pause, left)
        else:
            waits.add(asyncio.ensure_future(broker.wait_ready(left)))
            timeout = None
        try:
            if waits:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(min(pause, left))
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _begin_holding(self, reason: str) -> None:
        self.held += 1
        self._metrics.publishes_held.inc()
        if self._episode is None:
            self._episode = Episode(began=self._clock(), reason=reason)
            log.warning(
                "publishes held: the broker did not confirm; publishing again until it does",
                extra={"reason": reason, "hold_seconds": self.hold_seconds},
            )
        self._episode.held += 1

    def _end_holding(self, result: str, held_for: float) -> None:
        self.held -= 1
        self._metrics.publishes_held.dec()
        if result != "cancelled":
            self._metrics.publish_hold_seconds.labels(result).observe(held_for)
        episode = self._episode
        assert episode is not None
        episode.longest = max(episode.longest, held_for)
        if result == "confirmed":
            episode.confirmed += 1
        elif result == "expired":
            episode.expired += 1
        if self.held == 0:
            self._episode = None
            log.log(
                logging.WARNING if episode.expired else logging.INFO,
                "publishes held: episode over",
                extra={
                    "held": episode.held, "confirmed": episode.confirmed, "expired": episode.expired,
                    "longest_hold_s": round(episode.longest, 3),
                    "lasted_s": round(self._clock() - episode.began, 3), "first_reason": episode.reason,
                },
            )

    def _count_expired_alone(self, reason: str) -> None:
        """A failure with no hold to give (hold 0, or shutting down): one line unless an episode is on."""
        if self._episode is not None:
            self._episode.held += 1
            self._episode.expired += 1
        else:
            log.warning("callback not accepted: broker did not confirm", extra={"reason": reason})
