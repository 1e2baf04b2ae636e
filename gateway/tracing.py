"""The gateway's traces: one per callback request, the root of that callback's trace.

Imported by ``create_app`` only while tracing is on (runtime.tracing). The span covers
the request from the source guard on; the checks mark it with events as they pass
(``runtime.tracing.event``), and the publish is its child (``runtime.tracing.publishing``
in gateway.publisher), whose context travels in the message to the worker.

Manual spans rather than opentelemetry-instrumentation-aiohttp-server: that one records
the request's path (``url.path``, ``http.target``), and ours carries the callback token.
An incoming ``traceparent`` is not followed: a caller on the internet does not get to
choose our sampling (the request starts a trace of its own).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.routes import CALLBACK_PATH
from runtime import tracing
from runtime.otel import SpanKind, Status, StatusCode, Tracing

SPAN_NAME = f"POST {CALLBACK_PATH}"
ROUTE = CALLBACK_PATH + "/{token}"  # the route's template, never the path itself


def traced_callbacks(
    active: Tracing, message_id: web.RequestKey[str], content_type: web.RequestKey[str]
) -> Middleware:
    """A middleware that traces each request to the callback path (``message_id``,
    ``content_type``: where the handler leaves them on an accepted request)."""

    @web.middleware
    async def trace_callback(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (request.path == CALLBACK_PATH or request.path.startswith(CALLBACK_PATH + "/")):
            return await handler(request)
        started = time.time_ns()
        attributes: dict[str, Any] = {"http.request.method": request.method, "http.route": ROUTE}
        if request.content_length is not None:
            attributes["http.request.body.size"] = request.content_length
        with active.tracer.start_as_current_span(
            SPAN_NAME, kind=SpanKind.SERVER, start_time=started, attributes=attributes,
        ) as span:
            status, response = 500, None
            try:
                response = await handler(request)
                status = response.status
            except web.HTTPException as e:
                status = e.status
                raise
            finally:
                recording = span.is_recording()
                if recording or status >= 400:  # else nobody reads them
                    attributes.update(_outcome(request, status, response, message_id, content_type))
                if recording:
                    span.set_attributes(attributes)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
        if status >= 400 and not recording:
            # Refusals are always kept: this one's span was not sampled, so record it again.
            copy = active.tracer.start_span(
                SPAN_NAME, kind=SpanKind.SERVER, start_time=started,
                attributes={**attributes, tracing.ALWAYS_SAMPLED: True},
            )
            if status >= 500:
                copy.set_status(Status(StatusCode.ERROR))
            copy.end()
        return response

    return trace_callback


def _outcome(
    request: web.Request, status: int, response: web.StreamResponse | None,
    message_id: web.RequestKey[str], content_type: web.RequestKey[str],
) -> dict[str, Any]:
    facts: dict[str, Any] = {"http.response.status_code": status}
    if status == 202:
        facts[tracing.OUTCOME] = "accepted"
        facts[tracing.MESSAGE_ID] = request.get(message_id, "")
        facts[tracing.CONTENT_TYPE] = request.get(content_type, "")
        return facts
    facts[tracing.OUTCOME] = "refused"
    reason = _reason(response)
    if reason:
        facts[tracing.REASON] = reason
    return facts


def _reason(response: web.StreamResponse | None) -> str | None:
    """The reason the gateway gave (its own words, ``{"error": ...}``), at most 200 characters."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return None
    try:
        reason = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return reason[:200] if isinstance(reason, str) else None
