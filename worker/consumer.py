"""Consume callbacks in batches: decode, write in one transaction, ack after commit.

This module is the loop and the acks; the write is worker.landing's, moving a
message to another queue worker.moving's, putting a worker together worker.main's.

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
- What a worker holds is bounded by its settings, not by what callbacks
  contain (worker.budget): a delivery past FLOWSCRIBE_WORKER_MAX_HELD_BYTES of
  bodies goes straight back to the queue and the consumer is started again with
  less credit; a batch closes at FLOWSCRIBE_WORKER_MAX_HELD_ROWS decoded rows.
- On stop: cancel the consumer, land what is in hand within the shutdown
  timeout, and close; anything not acked by then is redelivered by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from runtime.amqp import BrokerSession, BrokerUnavailable
from runtime.errors import describe
from runtime.settings import Settings
from schemas import topology
from schemas.decoding import PayloadDecodeError
from schemas.message import Callback, InvalidMessage, to_callback
from schemas.payload import CHILD_TABLES
from schemas.topology import Topology
from store.batch import BatchResult
from store.outcomes import Outcome
from worker.acks import AckWindow
from worker.budget import BodyBudget, RowBudget
from worker.drift_log import DriftLog
from worker.failures import Fault
from worker.landing import Landing
from worker.metrics import WorkerMetrics
from worker.moving import attempts_so_far, dead_letter, hand_back, retry_later
from worker.tracing import for_worker

log = logging.getLogger("worker")

T = TypeVar("T")

# Batches a worker writes at once (each on its own pooled connection).
WRITES_IN_FLIGHT = 2
_UNTRACED = contextlib.nullcontext()


def _rows_of(callback: Callback) -> int:
    """Rows ``callback`` holds decoded: what the row budget counts."""
    analysis = callback.analysis
    if analysis is None:
        return 1
    return 1 + sum(len(getattr(analysis, attribute) or ()) for attribute in CHILD_TABLES)


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except Exception:  # noqa: BLE001 - aio-pika raises once the channel is gone
        return False


class Worker:
    """Batches deliveries from one queue and lands them; see the module docstring."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._drift: DriftLog | None = None  # checks a sample of the callbacks for fields the Structs do not know
        self._inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._carried: deque[AbstractIncomingMessage] = deque()  # left out of a batch closed by the row budget
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._window: AckWindow | None = None  # the current channel's unsettled deliveries
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._credit = 0  # the current consumer's prefetch
        self._seen = 0  # deliveries since it started
        self._subscribing = asyncio.Lock()
        self._resubscription: asyncio.Task[None] | None = None
        self.bodies = BodyBudget(settings.worker_max_held_bytes, settings.worker_prefetch, settings.max_body_bytes)
        self.rows = RowBudget(settings.worker_max_held_rows)
        self._broker: BrokerSession[Topology] | None = None
        self._stopping = False
        self._give_up_at = float("inf")
        self.name = f"worker@{socket.gethostname()}:{os.getpid()}"
        self.outcomes: Counter[str] = Counter()  # totals since start, for tests and logs
        # Committed messages acked, and the ack frames that took (worker.acks): logged at stop.
        self.acks: Counter[str] = Counter()
        self.metrics = WorkerMetrics()  # the same and more, for Prometheus (worker.http)
        self._landing = Landing(settings, pool, self.metrics)
        self._tracing = for_worker()  # None while tracing is off
        # The port its HTTP server (worker.http) is bound to, once it is (port 0 in the settings: any free one).
        self.http_port: int | None = None

    @property
    def unsettled(self) -> int:
        """Deliveries on the current channel neither acked nor rejected yet (in hand or being written)."""
        return len(self._window) if self._window is not None else 0

    def use_broker(self, broker: BrokerSession[Topology]) -> None:
        self._broker = broker

    def use_drift_log(self, drift: DriftLog) -> None:
        self._drift = drift

    async def attach(self, channel: AbstractChannel, declared: Topology) -> None:
        """Start consuming on a (new) channel; called by the broker session on every connect."""
        if self._stopping:
            return
        self._window = AckWindow()
        self._channel, self._queue = channel, declared.callback_queue
        self._consumer = None  # the previous channel's, if any, went with it
        await self._subscribe()
        log.info("consuming", extra={"queue": topology.CALLBACK_QUEUE, "prefetch": self._credit})

    async def _subscribe(self) -> None:
        """(Re)start the consumer with the credit the body budget allows now; none while it allows none.

        RabbitMQ applies a prefetch to the consumers started after it, so another
        credit takes another consumer. Deliveries already on their way to the old
        one still arrive (before the broker's CancelOk) and are handled as usual.
        """
        async with self._subscribing:
            channel, queue, window = self._channel, self._queue, self._window
            if self._stopping or channel is None or queue is None or window is None:
                return
            if self._consumer is not None:
                old, tag = self._consumer
                self._consumer = None
                await old.cancel(tag)
            credit = self.bodies.prefetch()
            if credit == 0:
                return  # paused: _finished starts it again once bodies are released

            async def deliver(message: AbstractIncomingMessage) -> None:
                await self._deliver(window, message)

            await channel.set_qos(prefetch_count=credit)
            tag = await queue.consume(deliver)
            self._consumer, self._credit, self._seen = (queue, tag), credit, 0

    async def _cancel_consumer(self) -> None:
        async with self._subscribing:  # a restart under way finishes first; none starts after (stopping)
            if self._consumer is not None:
                queue, tag = self._consumer
                self._consumer = None
                await queue.cancel(tag)

    def _resubscribe_soon(self) -> None:
        """Start the consumer again in the background (once, however many ask meanwhile)."""
        if self._resubscription is None or self._resubscription.done():
            self._resubscription = asyncio.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        try:
            await self._subscribe()
        except Exception as e:  # noqa: BLE001 - a channel that died is attached again by the broker session
            log.warning("restarting the consumer failed", extra={"reason": describe(e)})

    async def _deliver(self, window: AckWindow, message: AbstractIncomingMessage) -> None:
        window.delivered(message)
        self._seen += 1
        if not self.bodies.admit(len(message.body)):
            # Past the byte budget: straight back to the queue (for another worker,
            # or this one once it has room), and no more credit until then.
            await self._hand_back(message)
            self._resubscribe_soon()
            return
        await self._inbox.put(message)
        if self.bodies.resize(self._credit, self._seen):
            self._resubscribe_soon()

    def _finished(self, batch: list[AbstractIncomingMessage], rows: int) -> None:
        """The worker is done with ``batch``: its bodies and rows no longer count."""
        for message in batch:
            self.bodies.release(len(message.body))
        self.rows.release(rows)
        if self._stopping:
            return
        paused = self._consumer is None and self.bodies.prefetch() > 0
        if paused or self.bodies.resize(self._credit, self._seen):
            self._resubscribe_soon()

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
                # Decoded rows are bounded too: no decoding while the batches being written hold the limit.
                while writing and self.rows.full() and not stop.is_set():
                    await asyncio.wait({*writing, wake}, return_when=asyncio.FIRST_COMPLETED)
                    writing = {task for task in writing if not task.done()}
                prepared = await self._guarded(self._prepare(batch), batch)
                if not prepared:
                    self._finished(batch, 0)
                    continue
                while len(writing) >= WRITES_IN_FLIGHT and not stop.is_set():
                    # Waiting for a slot ends at a stop too: the writes in flight may be
                    # commits that wait as long as a synchronous standby is down.
                    await asyncio.wait({*writing, wake}, return_when=asyncio.FIRST_COMPLETED)
                    writing = {task for task in writing if not task.done()}
                # At a stop this batch joins the writes in flight, under the shutdown deadline.
                writing.add(asyncio.create_task(self._write(prepared, batch)))
            if writing:
                await self._finish_writes(writing)
        finally:
            wake.cancel()
        await self._shutdown()

    async def _write(
        self, prepared: tuple[list[Callback], dict[uuid.UUID, AbstractIncomingMessage]],
        batch: list[AbstractIncomingMessage],
    ) -> None:
        try:
            await self._guarded(self._land(*prepared), batch)
        finally:
            self._finished(batch, sum(map(_rows_of, prepared[0])))

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        # From now on a held batch stops retrying at the deadline (see worker.landing).
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
        first = self._carried.popleft() if self._carried else await self._inbox.get()
        if first is None:
            return []
        batch = [first]
        while self._carried and len(batch) < self._settings.batch_size:
            batch.append(self._carried.popleft())
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
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._cancel_consumer(), 2.0)
        in_hand = 0
        while self._carried or not self._inbox.empty():
            batch = [m for m in self._drain(self._settings.batch_size) if m is not None]
            in_hand += len(batch)
            if batch and time.monotonic() < self._give_up_at:
                await self._process_safely(batch)
        log.info("worker stopped", extra={"landed_on_stop": in_hand, **self.outcomes,
                                          "acked": self.acks["messages"], "ack_frames": self.acks["frames"],
                                          "left_for_redelivery": self.unsettled,
                                          "peak_held_bytes": self.bodies.peak, "peak_held_rows": self.rows.peak,
                                          "handed_back": self.bodies.handed_back})

    def _drain(self, limit: int) -> list[AbstractIncomingMessage | None]:
        taken: list[AbstractIncomingMessage | None] = []
        while len(taken) < limit and self._carried:
            taken.append(self._carried.popleft())
        while len(taken) < limit and not self._inbox.empty():
            taken.append(self._inbox.get_nowait())
        return taken

    async def _guarded(self, step: Awaitable[T], batch: list[AbstractIncomingMessage]) -> T | None:
        """Run a step on a batch; a bug in it returns the batch to the queue instead of killing the worker."""
        try:
            return await step
        except Exception:
            log.exception("batch failed unexpectedly; its messages go back to the queue",
                          extra={"messages": len(batch)})
            for message in batch:
                if self._unsettled(message):  # not those already acked or moved
                    await self._nack(message)
            return None

    async def _process_safely(self, batch: list[AbstractIncomingMessage]) -> None:
        prepared = await self._guarded(self._prepare(batch), batch)
        if prepared:
            await self._write(prepared, batch)
        else:
            self._finished(batch, 0)

    async def _prepare(
        self, batch: list[AbstractIncomingMessage]
    ) -> tuple[list[Callback], dict[uuid.UUID, AbstractIncomingMessage]] | None:
        """Decode a batch; poison is dead-lettered here. None when nothing is left to write."""
        messages: dict[uuid.UUID, AbstractIncomingMessage] = {}
        callbacks: list[Callback] = []
        rows = 0
        for i, message in enumerate(batch):
            if not _channel_open(message):
                continue  # its channel died: the broker redelivers it elsewhere
            decoding = time.time_ns()
            try:
                callback = to_callback(message)
            except (PayloadDecodeError, InvalidMessage) as e:
                if self._tracing is not None:
                    self._tracing.decoded(message, decoding, None, e)
                stage = "decode" if isinstance(e, PayloadDecodeError) else "validate"
                await self._dead_letter(message, stage, describe(e), type(e).__name__)
                continue
            if callback.id in messages:
                # The same message twice in hand (redelivered after a reconnect): land it once.
                self.outcomes[Outcome.REDELIVERED.value] += 1
                self.metrics.count(Outcome.REDELIVERED.value)
                await self._ack_all([message])
                continue
            if self._tracing is not None:
                self._tracing.decoded(message, decoding, callback)
            messages[callback.id] = message
            callbacks.append(callback)
            if self._drift is not None and not callback.reprocess:
                self._drift.check(callback.id, callback.received_at, callback.body, callback.content_type)
            rows += _rows_of(callback)
            if self.rows.held + rows >= self.rows.limit and i + 1 < len(batch):
                # The row budget is reached: the rest waits for the next batch, so a huge
                # callback is written on its own. (What the caller's batch holds is this part.)
                self._carried.extendleft(reversed(batch[i + 1:]))
                del batch[i + 1:]
                break
            # Decoding a batch is a few hundred ms of CPU; between two messages, let
            # the batches being written send their next COPY data, commit and ack,
            # or PostgreSQL idles until the whole batch is decoded.
            await asyncio.sleep(0)
        self.rows.take(rows)
        return (callbacks, messages) if callbacks else None

    async def _land(
        self, callbacks: list[Callback], messages: dict[uuid.UUID, AbstractIncomingMessage]
    ) -> None:
        """Write the batch (worker.landing); ack what committed, move what the database refused."""

        async def committed(landed: list[Callback], result: BatchResult, started: float) -> None:
            committed_at = time.time_ns()
            await self._ack_all([messages[callback.id] for callback in landed])
            if self._tracing is not None:
                began = committed_at - int((time.perf_counter() - started) * 1e9)
                self._tracing.landed(landed, messages, result.outcomes, began, committed_at, batch)
            for callback in landed:
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
                    "messages": len(landed),
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                    "rows": sum(result.rows.values()),
                    "ingested": sum(1 for o in result.outcomes.values() if o is Outcome.INGESTED),
                },
            )

        async def refused(callback: Callback, fault: Fault, exc: BaseException) -> None:
            message = messages[callback.id]
            if fault is Fault.CONFLICT:
                await self._retry_later(message, exc)
            else:
                await self._dead_letter(message, "database", describe(exc), type(exc).__name__)

        with self._tracing.batch(messages.values()) if self._tracing is not None else _UNTRACED as batch:
            await self._landing.land(callbacks, committed=committed, refused=refused,
                                     give_up_at=lambda: self._give_up_at)

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

    async def _hand_back(self, message: AbstractIncomingMessage) -> None:
        """Back to the queue as a copy (worker.moving.hand_back: no delivery counted against it);
        requeued instead if the copy is not confirmed."""
        try:
            if self._broker is None:
                raise BrokerUnavailable("no broker session")
            _channel, declared = self._broker.usable()
            await hand_back(declared, message, timeout=self._settings.publish_timeout)
        except Exception:  # noqa: BLE001 - the requeue still loses nothing
            await self._nack(message)
            return
        self._settled(message)

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
        delay = topology.retry_delay(attempts)
        await self._move(
            message, "retried", "scheduling a retry failed", "callback to be retried",
            lambda declared: retry_later(declared, message, attempts=attempts, error=describe(exc),
                                         timeout=self._settings.publish_timeout),
            {"attempt": attempts, "retry_in": delay, "reason": describe(exc)},
        )

    async def _dead_letter(
        self, message: AbstractIncomingMessage, stage: str, reason: str, error_class: str
    ) -> None:
        await self._move(
            message, "dead_lettered", "dead-lettering failed", "callback dead-lettered",
            lambda declared: dead_letter(declared, message, stage=stage, error=reason, error_class=error_class,
                                         by=self.name, timeout=self._settings.publish_timeout),
            {"stage": stage, "reason": reason},
        )

    async def _move(
        self,
        message: AbstractIncomingMessage,
        outcome: str,
        failed: str,
        event: str,
        move: Callable[[Topology], Awaitable[object]],
        facts: dict[str, object],
    ) -> None:
        """Move ``message`` to another queue (worker.moving) and count it as ``outcome``; if the
        move is not confirmed, the message goes back to its queue instead (``failed`` says what failed)."""
        try:
            if self._broker is None:
                raise BrokerUnavailable("no broker session")
            _channel, declared = self._broker.usable()
            await move(declared)
        except Exception as e:  # noqa: BLE001
            await self._return_to_queue(message, failed, e)
            return
        self._settled(message)
        self.outcomes[outcome] += 1
        self.metrics.count(outcome)
        log.warning(event, extra={"message_id": message.message_id, "outcome": outcome, **facts})
