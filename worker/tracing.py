"""The worker's traces: each callback's part of its trace, and one trace per batch linked to them.

Per callback, in the trace its message carries (``traceparent``, from the gateway or from
the copy a retry, dead letter or replay published): ``queued`` (from its publish to the
worker taking it up), ``decode``, ``store`` (the batch's write and commit, linked to the
batch's span) and ``ack``; a retry or a dead letter is a further span of the same trace
(``runtime.tracing.publishing`` in worker.moving).

Per batch, one span of its own, ``write batch``, linked to every callback's span context
in it (a batch is many traces' child: OpenTelemetry's span links), with a span per
statement of the transaction, COMMIT included (asyncpg's query logger: no patching, and
the time between two statements is the COPY that asyncpg does not log). A batch none of
whose callbacks is sampled is not traced.

Spans are made after the fact with their measured start and end times, so the worker's
loop keeps its shape and pays nothing while tracing is off: ``for_worker`` then gives
None and every hook is one ``if``. Nothing here imports OpenTelemetry (runtime.otel does).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractIncomingMessage

from runtime import tracing
from runtime.trace_names import (
    ALWAYS_SAMPLED,
    ANALYSIS_ID,
    BATCH_SIZE,
    BODY_SIZE,
    CONTENT_TYPE,
    HEADER_PUBLISHED_AT,
    JOB_ID,
    MESSAGE_ID,
    OUTCOME,
    REASON,
)
from schemas.message import Callback

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from runtime.otel import Tracing


def for_worker() -> WorkerTracing | None:
    """The worker's tracing, or None while tracing is off."""
    active = tracing.active()
    return WorkerTracing(active) if active is not None else None


def _facts(message: AbstractIncomingMessage, callback: Callback | None = None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        MESSAGE_ID: message.message_id or "", BODY_SIZE: len(message.body), CONTENT_TYPE: message.content_type or "",
    }
    if callback is not None:
        if callback.analysis is not None:
            facts[ANALYSIS_ID] = str(callback.analysis.ID)
        if callback.job_id is not None:
            facts[JOB_ID] = str(callback.job_id)
    return facts


class WorkerTracing:
    """The worker's spans (see the module docstring)."""

    def __init__(self, active: Tracing) -> None:
        self._active = active

    def decoded(
        self, message: AbstractIncomingMessage, started: int, callback: Callback | None,
        error: BaseException | None = None,
    ) -> None:
        """``message`` was decoded (into ``callback``) or refused (``error``) from ``started`` (ns) until now."""
        active = self._active
        parent = active.extract(message.headers)
        sampled = active.sampled(parent)
        if not sampled and error is None:
            return  # its spans would record nothing
        published = (message.headers or {}).get(HEADER_PUBLISHED_AT)
        if isinstance(published, int) and 0 < published < started and sampled:
            active.start("queued", parent=parent, kind="consumer", start_time=published,
                         attributes={MESSAGE_ID: message.message_id or ""}).end(started)
        facts = _facts(message, callback)
        if error is not None:
            # Its class only: the dead letter's header has the text, which may quote the body.
            facts.update({ALWAYS_SAMPLED: True, OUTCOME: "dead_lettered", REASON: type(error).__name__})
        span = active.start("decode", parent=parent, start_time=started, attributes=facts)
        if error is not None:
            from runtime.otel import failed

            failed(span, error)
        span.end()

    @contextlib.contextmanager
    def batch(self, messages: Iterable[AbstractIncomingMessage]) -> Iterator[Span | None]:
        """The batch's span for the block (its write), linked to every callback's; None if none is sampled."""
        active = self._active
        contexts = [active.extract(message.headers) for message in messages]
        if not any(map(active.sampled, contexts)):
            yield None
            return
        span = active.start("write batch", kind="client", links=contexts,
                            attributes={BATCH_SIZE: len(contexts), ALWAYS_SAMPLED: True, "db.system": "postgresql"})
        try:
            with active.use(span):
                yield span
        finally:
            span.end()

    @contextlib.contextmanager
    def statements(self, conn: Any) -> Iterator[None]:
        """A span per statement ``conn`` runs in the block, children of the current batch's span."""
        active = self._active
        parent = active.current()
        if not active.sampled(parent):
            yield
            return

        def logged(query: Any) -> None:
            ended = time.time_ns()
            text = str(query.query)
            # Named by its first word (SELECT, INSERT, COMMIT …); its text is our own SQL, never a value.
            name = text.split(None, 1)[0].rstrip(";").upper() if text.strip() else "statement"
            span = active.start(name, parent=parent, kind="client", start_time=ended - int(query.elapsed * 1e9),
                                attributes={"db.system": "postgresql", "db.query.text": text[:2000]})
            if query.exception is not None:
                from runtime.otel import failed

                failed(span, query.exception)
            span.end(ended)

        conn.add_query_logger(logged)
        try:
            yield
        finally:
            conn.remove_query_logger(logged)

    def landed(
        self, callbacks: list[Callback], messages: dict[Any, AbstractIncomingMessage], outcomes: dict[Any, Any],
        started: int, committed: int, batch: Span | None,
    ) -> None:
        """``callbacks`` committed (written from ``started`` to ``committed``, ns) and were acked until now."""
        active = self._active
        acked = time.time_ns()
        links: list[Context] = [active.context_of(batch)] if batch is not None else []
        for callback in callbacks:
            message = messages[callback.id]
            parent = active.extract(message.headers)
            if not active.sampled(parent):
                continue
            facts = _facts(message, callback)
            facts.update({OUTCOME: str(outcomes[callback.id]), BATCH_SIZE: len(messages)})
            active.start("store", parent=parent, kind="client", start_time=started, attributes=facts,
                         links=links).end(committed)
            active.start("ack", parent=parent, kind="consumer", start_time=committed,
                         attributes={MESSAGE_ID: facts[MESSAGE_ID]}).end(acked)
