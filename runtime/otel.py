"""The OpenTelemetry SDK, set up once per process: the only module that imports it at the top.

Imported by ``runtime.tracing.installed`` alone, and only when traces are configured:
a process with tracing off never loads the SDK (tests/test_tracing.py checks it).

Sampling. The sampler the environment names (``OTEL_TRACES_SAMPLER``, default
``parentbased_always_on``; ``parentbased_traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG=0.01``
keeps one trace in a hundred) decides for every span, wrapped by ``ErrorsAlwaysSampled``:
a span started with ``flowscribe.always_sampled`` is recorded whatever it says. The
processes start such spans where something went wrong and they know it: the gateway
for a refusal (once the answer is known, as a second, recorded copy of the request's
span when that was not sampled), the worker for a decode failure and a dead letter,
``dlq replay`` for a replay. A dead letter's copy carries that recorded span's context,
so the replay and its landing are sampled too (parent-based): the whole rest of a
failed callback's trace is kept, in the callback's own trace id. The alternative,
recording every span and choosing at the end, would cost at 1% what 100% costs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from runtime.trace_names import (
    ALWAYS_SAMPLED,
    BODY_SIZE,
    CONTENT_TYPE,
    HEADER_PUBLISHED_AT,
    MESSAGE_ID,
    OUTCOME,
    REASON,
    TRACESTATE,
)

__all__ = ["ErrorsAlwaysSampled", "Link", "SpanKind", "Status", "StatusCode", "Tracing", "failed"]


def failed(span: trace.Span, error: BaseException) -> None:
    """Mark ``span`` failed, with the error's class only."""
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.set_attribute("error.type", type(error).__name__)


class ErrorsAlwaysSampled(Sampler):
    """``delegate``'s decision, except that a span marked ``flowscribe.always_sampled`` is always kept."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str, kind: SpanKind | None = None,
        attributes: Attributes = None, links: Sequence[Link] | None = None, trace_state: Any = None,
    ) -> SamplingResult:
        if attributes and attributes.get(ALWAYS_SAMPLED):
            parent = trace.get_current_span(parent_context).get_span_context()
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes,
                                  parent.trace_state if parent.is_valid else None)
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"ErrorsAlwaysSampled{{{self._delegate.get_description()}}}"


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """AMQP headers as a W3C carrier: values may arrive as bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("ascii", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


class Tracing:
    """One process's tracer provider, tracer and W3C propagator."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("flowscribe-ingest")
        # W3C Trace Context, whatever OTEL_PROPAGATORS says: the worker reads exactly what the gateway wrote.
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def build(cls, service: str, *, exporter: SpanExporter | None = None) -> Tracing:
        """From the OTEL_* variables; ``exporter`` (tests) replaces OTLP and exports each span at once."""
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service}))
        provider = TracerProvider(resource=resource, sampler=ErrorsAlwaysSampled(_get_from_env_or_default()))
        if exporter is None:
            # Batched, off the event loop (the SDK's thread), queue bounded (OTEL_BSP_MAX_QUEUE_SIZE):
            # a collector that is slow or gone costs dropped spans, never a delay to a callback.
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def extract(self, headers: Mapping[str, Any] | None) -> Context:
        """The trace context a message's headers carry (an empty context if none)."""
        return self._propagator.extract(headers or {}, getter=_GETTER)

    def inject(self, headers: dict[str, Any], context: Context | None = None) -> None:
        """Put ``context``'s (default: the current) span context in ``headers``, replacing any."""
        headers.pop(TRACESTATE, None)
        self._propagator.inject(headers, context=context)

    def event(self, name: str) -> None:
        trace.get_current_span().add_event(name)

    @contextlib.contextmanager
    def publishing(
        self, message: Any, name: str, *, destination: str, parent: Mapping[str, Any] | None, always: bool,
        outcome: str | None = None, reason: str | None = None,
    ) -> Iterator[trace.Span]:
        """See runtime.tracing.publishing."""
        span_attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq", "messaging.operation.type": "send",
            "messaging.destination.name": destination, BODY_SIZE: len(message.body),
            CONTENT_TYPE: message.content_type or "",
        }
        if message.message_id:
            span_attributes[MESSAGE_ID] = message.message_id
        if always:
            span_attributes[ALWAYS_SAMPLED] = True
        if outcome:
            span_attributes[OUTCOME] = outcome
        if reason:
            span_attributes[REASON] = reason
        parent_context = self.extract(parent) if parent is not None else None
        # No exception recorded as such: its text may say anything (runtime.errors.describe is for logs).
        with self.tracer.start_as_current_span(
            name, context=parent_context, kind=SpanKind.PRODUCER, attributes=span_attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            headers = message.headers if message.headers is not None else {}
            self.inject(headers)  # also when not sampled: the trace id goes on (a dead letter may be kept)
            if span.is_recording():
                headers[HEADER_PUBLISHED_AT] = time.time_ns()
            else:
                headers.pop(HEADER_PUBLISHED_AT, None)
            message.headers = headers
            try:
                yield span
            except BaseException as e:
                failed(span, e)
                raise

    def start(
        self, name: str, *, parent: Context | None = None, kind: str = "internal",
        start_time: int | None = None, attributes: Mapping[str, Any] | None = None,
        links: Sequence[Context] = (),
    ) -> trace.Span:
        """A span (not made current) with ``links`` to the spans of other contexts; end it with
        ``span.end(end_time)``. ``kind``: internal, consumer, producer, client, server."""
        return self.tracer.start_span(
            name, context=parent, kind=SpanKind[kind.upper()], attributes=attributes, start_time=start_time,
            links=[Link(trace.get_current_span(link).get_span_context()) for link in links],
        )

    @staticmethod
    def current() -> Context:
        return otel_context.get_current()

    @staticmethod
    def sampled(context: Context) -> bool:
        """Whether the trace ``context`` continues is sampled (exported)."""
        return trace.get_current_span(context).get_span_context().trace_flags.sampled

    @staticmethod
    def use(span: trace.Span) -> contextlib.AbstractContextManager[trace.Span]:
        """``span`` as the current one for a block (not ended on the way out)."""
        return trace.use_span(span, end_on_exit=False)

    @staticmethod
    def context_of(span: trace.Span) -> Context:
        return trace.set_span_in_context(span, otel_context.Context())
