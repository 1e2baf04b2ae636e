"""Traces (OpenTelemetry): on when an OTLP endpoint is configured, otherwise nothing at all.

Configured the standard way, by the SDK's own variables: ``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` turns it on (spans go there over OTLP/HTTP);
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``),
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*`` … apply as documented by OpenTelemetry;
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turns it off again.

Off, this module is all there is: the SDK is never imported (runtime.otel is the one
module that imports it, and only ``installed`` imports that), and every hook the
processes call is a check of one module global. On, a process holds one ``Tracing``
(runtime.otel) for its lifetime, installed by the command line around the command.

The trace context travels with each callback in its AMQP headers (W3C ``traceparent``
and ``tracestate``), set wherever a message is published (``publishing``): the
gateway, the worker's retry and dead-letter copies, ``dlq replay``; the names of
headers and attributes, and the trace id the ledger keeps, are runtime.trace_names'.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from runtime.trace_names import (  # re-exported: the hooks name them as tracing.X
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
    TRACEPARENT,
    TRACESTATE,
    sampled_trace_id,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from runtime.otel import Tracing

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_NULL = contextlib.nullcontext()

__all__ = [
    "ALWAYS_SAMPLED", "ANALYSIS_ID", "BATCH_SIZE", "BODY_SIZE", "CONTENT_TYPE", "HEADER_PUBLISHED_AT", "JOB_ID",
    "MESSAGE_ID", "OUTCOME", "REASON", "TRACEPARENT", "TRACESTATE", "TracingUnavailable", "active", "configured",
    "event", "flush", "installed", "publishing", "sampled_trace_id",
]

_active: Tracing | None = None


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint, and not switched off."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return any(environ.get(name, "").strip() for name in _ENDPOINTS)


def active() -> Tracing | None:
    """This process's tracing, or None while it is off (every hook checks this first)."""
    return _active


class TracingUnavailable(RuntimeError):
    """Traces are configured but the SDK is not installed (the `tracing` extra)."""


@contextlib.contextmanager
def installed(service: str, *, exporter: SpanExporter | None = None) -> Iterator[Tracing | None]:
    """Tracing for the block, if configured (or given an ``exporter``: the tests' in-memory one).

    ``service`` is the ``service.name`` unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` name one. On the way out the spans still queued are
    exported (bounded by ``OTEL_BSP_EXPORT_TIMEOUT``) and tracing is off again.
    """
    global _active
    if exporter is None and not configured():
        yield None
        return
    try:
        from runtime.otel import Tracing
    except ImportError as e:
        raise TracingUnavailable(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({e});"
            " install flowscribe-ingest[tracing] or unset it"
        ) from None
    tracing = Tracing.build(service, exporter=exporter)
    previous, _active = _active, tracing
    try:
        yield tracing
    finally:
        _active = previous
        tracing.shutdown()


def flush() -> None:
    """Export the spans still queued (bounded by ``OTEL_BSP_EXPORT_TIMEOUT``): for a forked process
    that ends with ``os._exit``, which runs no ``installed`` exit."""
    tracing = _active
    if tracing is not None:
        tracing.provider.force_flush()


def publishing(
    message: Any, name: str, *, destination: str, parent: Mapping[str, Any] | None = None, always: bool = False,
    outcome: str | None = None, reason: str | None = None,
) -> contextlib.AbstractContextManager[object]:
    """A span around publishing ``message`` (an aio_pika.Message) to ``destination`` (the exchange)
    that puts its own context in the message's headers; nothing while tracing is off. Its parent
    is the trace in the ``parent`` headers (a message this one copies), else the current span.
    ``always``: record it whatever the sampling ratio (a dead letter), and so the rest of that
    callback's trace after it. ``outcome``, ``reason``: what the move means for the callback
    (``dead_lettered``, and the error's class: never its text, which may quote the body)."""
    tracing = _active
    if tracing is None:
        return _NULL
    return tracing.publishing(message, name, destination=destination, parent=parent, always=always,
                              outcome=outcome, reason=reason)


def event(name: str) -> None:
    """Mark a moment (a check passed) on the current span; nothing while tracing is off."""
    tracing = _active
    if tracing is not None:
        tracing.event(name)
