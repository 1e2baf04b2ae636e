"""The names traces use on messages and spans, and a trace id read from a message without the SDK.

Apart from runtime.tracing (which may load the SDK) so that runtime.otel, schemas and the
store can use them without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# W3C Trace Context header names, as AMQP header keys.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Set beside them by every traced publish: when (ns since the epoch) the message was put on
# the broker, so that the worker can show how long it waited in the queue.
HEADER_PUBLISHED_AT = "x-flowscribe-published-at"

# Span attributes a person searches by (and nothing else of a callback: never a token, a
# body or a signature; tests/test_tracing.py holds every exported attribute to this).
MESSAGE_ID = "messaging.message.id"
BODY_SIZE = "messaging.message.body.size"
BATCH_SIZE = "messaging.batch.message_count"
CONTENT_TYPE = "flowscribe.content_type"
ANALYSIS_ID = "flowscribe.analysis_id"
JOB_ID = "flowscribe.job_id"
OUTCOME = "flowscribe.outcome"
REASON = "flowscribe.reason"  # why a callback was refused or dead-lettered (our own words, as answered)
# A span started with this attribute true is recorded and exported whatever the sampling
# ratio: refusals and dead letters (runtime.otel.ErrorsAlwaysSampled).
ALWAYS_SAMPLED = "flowscribe.always_sampled"

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})")


def sampled_trace_id(headers: Mapping[str, Any] | None) -> str | None:
    """The trace id (32 hex digits) of a message's ``traceparent`` header, if it has a valid one
    whose trace is sampled (exported: a trace UI can show it)."""
    if not headers:
        return None
    value = headers.get(TRACEPARENT)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None or match[1] == "0" * 32 or not int(match[2], 16) & 1:  # flag 01: sampled
        return None
    return match[1]
