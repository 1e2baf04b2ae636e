"""Consume callbacks in batches: decode, write in one transaction, ack after commit.

- A message that cannot be decoded is dead-lettered at once with the reason;
  the rest of its batch goes on.
- A batch the database refuses because of one message's data is split in
  halves until that message stands alone; it is dead-lettered with the
  database's error and the rest commits.
- A transient failure (serialization failure, deadlock) is retried at once a
  few times; if it persists, each message goes to a retry queue and comes back
  after a delay that grows per attempt, up to FLOWSCRIBE_MAX_ATTEMPTS; then it
  is dead-lettered as exhausted, with the last error.
- A database that cannot be reached is nobody's fault: the batch is held and
  retried with growing pauses until the database is back. The worker takes no
  new work meanwhile (prefetch is full), so nothing is dead-lettered for it.
- On stop: cancel the consumer, land what is in hand within the shutdown
  timeout, and close; anything not acked by then is redelivered by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from flowscribe_ingest.amqp import BrokerSession, BrokerUnavailable
from flowscribe_ingest.metrics import WorkerMetrics
from flowscribe_ingest.settings import Settings
from schemas import topology
from schemas.topology import Topology
from worker.acks import AckWindow
from worker.dead_letter import attempts_so_far, dead_letter, retry_later
from worker.decoding import PayloadDecodeError, decode_payload
from worker.failures import Fault, classify, describe
from worker.http import Readiness, serving
from worker.rows import Callback
from worker.store import Outcome, write_batch

log = logging.getLogger("worker")

T = TypeVar("T")

# Batches a worker writes at once (each on its own pooled connection).
WRITES_IN_FLIGHT = 2

# How often a batch is re-run at once after colliding with another transaction
# before its messages go to the retry queues (each attempt counted per message).
MAX_CONFLICT_RETRIES = 3


class InvalidMessage(Exception):
    """The message's properties are not those the gateway sets (not the body's fault)."""


def to_callback(message: AbstractIncomingMessage) -> Callback:
    """Check the message's properties and decode its body; raises on either."""
    try:
        callback_id = uuid.UUID(message.message_id or "")
    except ValueError:
        raise InvalidMessage(f"message_id {message.message_id!r} is not a UUID") from None
    headers = message.headers or {}
    received_at = _received_at(headers.get(topology.HEADER_RECEIVED_AT), message.timestamp)
    body = message.body
    digest = hashlib.sha256(body).hexdigest()
    claimed = headers.get(topology.HEADER_BODY_SHA256)
    if claimed is not None and claimed != digest:
        raise InvalidMessage("the body does not match its SHA-256 header (corrupted on the way)")
    payload = decode_payload(body, message.content_type)
    reprocess = headers.get(topology.HEADER_REPROCESS) == "1"
    return Callback(callback_id, received_at, message.content_type or "", digest, body, payload, reprocess)


def _received_at(header: object, timestamp: datetime.datetime | None) -> datetime.datetime:
    if isinstance(header, str):
        try:
            value = datetime.datetime.fromisoformat(header)
        except ValueError:
            raise InvalidMessage(f"{topology.HEADER_RECEIVED_AT} {header!r} is not a timestamp") from None
    elif timestamp is not None:
        value = timestamp  # whole seconds only: a message not published by our gateway
    else:
        raise InvalidMessage(f"message has neither {topology.HEADER_RECEIVED_AT} nor a timestamp")
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except Exception:  # noqa: BLE001 - aio-pika raises once the channel is gone
        return False


class Worker:
    """Batches deliveries from one queue and lands them; see the module docstring."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._window: AckWindow | None = None  # the current channel's unsettled deliveries
        self._broker: BrokerSession | None = None
        self._stopping = False
        self._give_up_at = float("inf")
        self.name = f"worker@{socket.gethostname()}:{os.getpid()}"
        self.outcomes: Counter[str] = Counter()  # totals since start, for tests and logs
        # Committed messages acked, and the ack frames that took (worker.acks): logged at stop.
        self.acks: Counter[str] = Counter()
        self.metrics = WorkerMetrics()  # the same and more, for Prometheus (worker.http)

    @property
    def unsettled(self) -> int:
        """Deliveries on the current channel neither acked nor rejected yet (in hand or being written)."""
        return len(self._window) if self._window is not None else 0

    def use_broker(self, broker: BrokerSession) -> None:
        self._broker = broker

    async def attach(self, channel: AbstractChannel, declared: Topology) -> None:
        """Start consuming on a (new) channel; called by the broker session on every connect."""
        if self._stopping:
            return
        window = self._window = AckWindow()

        async def deliver(message: AbstractIncomingMessage) -> None:
            window.delivered(message)
            await self._inbox.put(message)

        tag = await declared.callback_queue.consume(deliver)
        self._consumer = (declared.callback_queue, tag)
        log.info("consuming", extra={"queue": topology.CALLBACK_QUEUE})

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then land what is in hand and return."""
        wake = asyncio.create_task(self._wake_on(stop))
        # Up to WRITES_IN_FLIGHT batches are written at once, each in its own
        # transaction on its own connection, while the next is collected and
        # decoded: alone, the worker and PostgreSQL each idle half the time
        # waiting for the other. Concurrent writes are as safe as concurrent
        # workers (the store's advisory locks serialise overlapping keys), and
        # the default prefetch (3 x batch) holds them and the one being decoded.
        writing: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                batch = await self._collect()
                if not batch:
                    continue
                prepared = await self._guarded(self._prepare(batch), batch)
                if not prepared:
                    continue
                while len(writing) >= WRITES_IN_FLIGHT:
                    _done, writing = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                writing.add(asyncio.create_task(self._guarded(self._land(*prepared), batch)))
            if writing:
                await self._finish_writes(writing)
        finally:
            wake.cancel()
        await self._shutdown()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        # From now on a held batch stops retrying at the deadline (see _land).
        self._give_up_at = time.monotonic() + self._settings.shutdown_timeout
        self._inbox.put_nowait(None)  # unblocks _collect

    async def _finish_writes(self, writing: set[asyncio.Task[None]]) -> None:
        """Let the writes in flight finish until the shutdown deadline, then abandon them.

        A write may be stuck in a statement, not between retries: a commit that
        waits for a synchronous standby that is down waits as long as the standby
        is. Abandoning it acks nothing, so the broker redelivers its messages;
        whatever the server committed meanwhile is recognised by id then.
        """
        _done, pending = await asyncio.wait(
            writing, timeout=max(0.0, self._give_up_at - time.monotonic())
        )
        if pending:
            log.warning("writes still waiting at the shutdown deadline: leaving them to redelivery",
                        extra={"writes": len(pending)})
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5.0)

    async def _collect(self) -> list[AbstractIncomingMessage]:
        """The next batch: wait for one message, then take more until full or the wait is over."""
        first = await self._inbox.get()
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self._settings.batch_wait
        while len(batch) < self._settings.batch_size:
            try:
                message = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    message = await asyncio.wait_for(self._inbox.get(), remaining)
                except TimeoutError:
                    break
            if message is None:
                break
            batch.append(message)
        return batch

    async def _shutdown(self) -> None:
        self._stopping = True
        self._give_up_at = min(self._give_up_at, time.monotonic() + self._settings.shutdown_timeout)
        if self._consumer is not None:
            queue, tag = self._consumer
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), 2.0)
        in_hand = 0
        while not self._inbox.empty():
            batch = [m for m in self._drain(self._settings.batch_size) if m is not None]
            in_hand += len(batch)
            if batch and time.monotonic() < self._give_up_at:
                await self._process_safely(batch)
        log.info("worker stopped", extra={"landed_on_stop": in_hand, **self.outcomes,
                                          "acked": self.acks["messages"], "ack_frames": self.acks["frames"],
                                          "left_for_redelivery": self.unsettled})

    def _drain(self, limit: int) -> list[AbstractIncomingMessage | None]:
        taken: list[AbstractIncomingMessage | None] = []
        while len(taken) < limit and not self._inbox.empty():
            taken.append(self._inbox.get_nowait())
        return taken

    async def _guarded(self, step: Awaitable[T], batch: list[AbstractIncomingMessage]) -> T | None:
        """Run a step on a batch; a bug in it returns the batch to the queue instead of killing the worker."""
        try:
            return await step
        except Exception:  # noqa: BLE001 - the worker outlives any one batch
            log.exception("batch failed unexpectedly; its messages go back to the queue",
                          extra={"messages": len(batch)})
            for message in batch:
                if self._unsettled(message):  # not those already acked or moved
                    await self._nack(message)
            return None

    async def _process_safely(self, batch: list[AbstractIncomingMessage]) -> None:
        prepared = await self._guarded(self._prepare(batch), batch)
        if prepared:
            await self._guarded(self._land(*prepared), batch)

    async def _prepare(
        self, batch: list[AbstractIncomingMessage]
    ) -> tuple[list[Callback], dict[uuid.UUID, AbstractIncomingMessage]] | None:
        """Decode a batch; poison is dead-lettered here. None when nothing is left to write."""
        messages: dict[uuid.UUID, AbstractIncomingMessage] = {}
        callbacks: list[Callback] = []
        for message in batch:
            if not _channel_open(message):
                continue  # its channel died: the broker redelivers it elsewhere
            try:
                callback = to_callback(message)
            except (PayloadDecodeError, InvalidMessage) as e:
                stage = "decode" if isinstance(e, PayloadDecodeError) else "validate"
                await self._dead_letter(message, stage, describe(e), type(e).__name__)
                continue
            if callback.id in messages:
                # The same message twice in hand (redelivered after a reconnect): land it once.
                self.outcomes[Outcome.REDELIVERED.value] += 1
                self.metrics.count(Outcome.REDELIVERED.value)
                await self._ack_all([message])
                continue
            messages[callback.id] = message
            callbacks.append(callback)
            # Decoding a batch is a few hundred ms of CPU; between two messages, let
            # the batches being written send their next COPY data, commit and ack,
            # or PostgreSQL idles until the whole batch is decoded.
            await asyncio.sleep(0)
        return (callbacks, messages) if callbacks else None

    async def _land(
        self, callbacks: list[Callback], messages: dict[uuid.UUID, AbstractIncomingMessage]
    ) -> None:
        delay = 0.1
        conflicts = 0
        while True:
            started = time.perf_counter()
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    try:
                        result = await write_batch(conn, callbacks)
                    except Exception as e:
                        if classify(e) is Fault.UNAVAILABLE:
                            # A connection that timed out, lost its socket mid-statement
                            # or finds itself on a read-only server is never handed out again.
                            conn.terminate()
                        raise
            except Exception as e:  # noqa: BLE001 - classified below, nothing escapes
                fault = classify(e)
                if fault is Fault.UNAVAILABLE:
                    # After a failover every pooled connection may be to the old primary
                    # (dead, or back as a read-only standby): replace them all, so the
                    # retry connects afresh to whichever host is the primary now.
                    await self._pool.expire_connections()
                    self.metrics.database_unavailable()
                    if time.monotonic() >= self._give_up_at:
                        log.warning("database unavailable at shutdown: leaving batch to redelivery",
                                    extra={"messages": len(callbacks)})
                        return
                    log.warning("database unavailable: holding batch",
                                extra={"messages": len(callbacks), "reason": describe(e), "retry_in": delay})
                    await asyncio.sleep(min(delay, max(0.0, self._give_up_at - time.monotonic())))
                    delay = min(delay * 2, self._settings.database_retry_max_delay)
                    continue
                if fault is Fault.CONFLICT and conflicts < MAX_CONFLICT_RETRIES:
                    conflicts += 1
                    await asyncio.sleep(0.05 * conflicts)
                    continue
                if len(callbacks) == 1:
                    message = messages[callbacks[0].id]
                    if fault is Fault.CONFLICT:
                        await self._retry_later(message, e)
                    else:
                        await self._dead_letter(message, "database", describe(e), type(e).__name__)
                    return
                # Find the message the database refused: split and land each half.
                half = len(callbacks) // 2
                await self._land(callbacks[:half], messages)
                await self._land(callbacks[half:], messages)
                return
            break
        self.metrics.landed(callbacks, result, time.perf_counter() - started)
        await self._ack_all([messages[callback.id] for callback in callbacks])
        for callback in callbacks:
            outcome = result.outcomes[callback.id]
            self.outcomes[outcome.value] += 1
            log.info(
                "callback stored",
                extra={
                    "message_id": str(callback.id),
                    "analysis_id": str(callback.analysis.ID) if callback.analysis else None,
                    "outcome": outcome.value,
                },
            )
        log.info(
            "batch committed",
            extra={
                "messages": len(callbacks),
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "rows": sum(result.rows.values()),
                "ingested": sum(1 for o in result.outcomes.values() if o is Outcome.INGESTED),
            },
        )

    async def _ack_all(self, landed: list[AbstractIncomingMessage]) -> None:
        """Ack messages under one deadline (one timer, not one task per ack): a frame
        written to a connection that died unnoticed can wait forever in the client.
        One frame for all of them when nothing older is unsettled (worker.acks)."""
        window = self._window
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                if window is not None and landed and all(map(window.owns, landed)):
                    self.acks["frames"] += await window.ack(landed)
                else:  # some came on a channel that has closed since: those acks fail
                    for message in landed:
                        await message.ack()
                        self._settled(message)
                        self.acks["frames"] += 1
            self.acks["messages"] += len(landed)
        except Exception as e:  # noqa: BLE001
            # Whatever was not acked is redelivered, and the store recognises it by id.
            log.warning("acks failed; unacked messages will be redelivered",
                        extra={"messages": len(landed), "reason": describe(e)})

    async def _return_to_queue(self, message: AbstractIncomingMessage, failed: str, exc: BaseException) -> None:
        """Moving the message elsewhere was not confirmed: requeue it rather than risk losing it.

        Should this keep happening, the queue's delivery limit hands it to the
        broker's own dead-lettering.
        """
        log.error(f"{failed}; the message goes back to the queue",
                  extra={"message_id": message.message_id, "reason": describe(exc)})
        await self._nack(message)

    async def _nack(self, message: AbstractIncomingMessage) -> None:
        """Return ``message`` to the queue, if its channel still can (else the broker already has)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(message.nack(requeue=True), self._settings.publish_timeout)
            self._settled(message)

    def _unsettled(self, message: AbstractIncomingMessage) -> bool:
        """Not yet acked or rejected by us; a message of a closed channel counts (settling it fails harmlessly)."""
        window = self._window
        return window is None or window.owns(message) or not _channel_open(message)

    def _settled(self, message: AbstractIncomingMessage) -> None:
        if self._window is not None:
            self._window.settled(message)

    async def _retry_later(self, message: AbstractIncomingMessage, exc: BaseException) -> None:
        """A transient failure that outlasted in-process retries: try again later, or give up."""
        attempts = attempts_so_far(message) + 1
        if attempts >= self._settings.max_attempts:
            reason = f"exhausted after {attempts} attempts; last error: {describe(exc)}"
            await self._dead_letter(message, "retry", reason, "RetriesExhausted")
            return
        try:
            _channel, declared = self._usable()
            delay = await retry_later(
                declared, message, attempts=attempts, error=describe(exc),
                timeout=self._settings.publish_timeout,
            )
        except Exception as e:  # noqa: BLE001
            await self._return_to_queue(message, "scheduling a retry failed", e)
            return
        self._settled(message)
        self.outcomes["retried"] += 1
        self.metrics.count("retried")
        log.warning("callback to be retried",
                    extra={"message_id": message.message_id, "outcome": "retried", "attempt": attempts,
                           "retry_in": delay, "reason": describe(exc)})

    def _usable(self) -> tuple[AbstractChannel, Topology]:
        if self._broker is None:
            raise BrokerUnavailable("no broker session")
        return self._broker.usable()

    async def _dead_letter(
        self, message: AbstractIncomingMessage, stage: str, reason: str, error_class: str
    ) -> None:
        try:
            _channel, declared = self._usable()
            await dead_letter(
                declared, message, stage=stage, error=reason, error_class=error_class,
                by=self.name, timeout=self._settings.publish_timeout,
            )
        except Exception as e:  # noqa: BLE001
            await self._return_to_queue(message, "dead-lettering failed", e)
            return
        self._settled(message)
        self.outcomes["dead_lettered"] += 1
        self.metrics.count("dead_lettered")
        log.warning("callback dead-lettered",
                    extra={"message_id": message.message_id, "outcome": "dead_lettered",
                           "stage": stage, "reason": reason})


async def run_worker(settings: Settings, stop: asyncio.Event) -> Worker:
    """Run one worker until ``stop`` is set; returns it (with its counters) once stopped."""
    async with asyncpg.create_pool(
        settings.database_url,
        min_size=0,
        max_size=WRITES_IN_FLIGHT + 1,  # one spare for the readiness probe
        command_timeout=60,
        # asyncpg prepares every statement; after five runs PostgreSQL may switch
        # to a generic plan chosen while the tables were small (sequential scans
        # for `= ANY($1)` look-ups), and keep it as they grow. Planning each run
        # costs little next to a batch and measured 1.4x faster on growing tables.
        server_settings={"plan_cache_mode": "force_custom_plan"},
    ) as pool:
        worker = Worker(settings, pool)
        async with BrokerSession(
            settings.amqp_url, "worker", prefetch=settings.worker_prefetch, on_ready=worker.attach
        ) as broker:
            worker.use_broker(broker)
            async with serving(settings, worker.metrics.registry, Readiness(broker, pool)):
                log.info("worker started", extra={"batch_size": settings.batch_size,
                                                  "prefetch": settings.worker_prefetch})
                await worker.run(stop)
    return worker
