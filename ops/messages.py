"""AMQP messages as ops handle them: copies to publish again, and a JSON form that round-trips.

AMQP header values are typed (timestamps, byte arrays, decimals, nested tables)
and JSON is not, so the JSON form tags what JSON cannot say: ``{"$datetime":
"<ISO 8601>"}``, ``{"$bytes": "<base64>"}``, ``{"$decimal": "1.25"}``, and a table
that itself looks like a tag is wrapped as ``{"$table": {...}}``. Decoding gives
back values the AMQP library encodes with the same types (bytes come back as a
``bytearray``, which is how the library writes a byte array).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from runtime.messages import PROPERTIES, republishable
from runtime.trace_names import HEADER_PUBLISHED_AT
from schemas import topology

# Headers that describe a message's stay in the dead-letter queue or its past
# attempts; a replayed message starts afresh without them (x-flowscribe-replays
# keeps the history). x-delivery-count is the broker's own counter.
STAY_HEADERS = frozenset({
    topology.HEADER_ERROR,
    topology.HEADER_ERROR_CLASS,
    topology.HEADER_ERROR_STAGE,
    topology.HEADER_DEAD_LETTERED_AT,
    topology.HEADER_DEAD_LETTERED_BY,
    topology.HEADER_ATTEMPTS,
    topology.HEADER_LAST_ERROR,
    HEADER_PUBLISHED_AT,  # when the dead letter was published (a traced replay stamps its own)
})
BROKER_HEADERS = frozenset({"x-delivery-count"})

def replay_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """What ``dlq replay`` publishes: the original id, body, receive time; the reasons dropped; replays + 1."""
    headers = {
        key: value
        for key, value in (message.headers or {}).items()
        if key not in STAY_HEADERS and key not in BROKER_HEADERS
    }
    headers[topology.HEADER_REPLAYS] = replays(message) + 1
    return republishable(message, headers)


def replays(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(topology.HEADER_REPLAYS, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# --- JSON form ----------------------------------------------------------------

FORMAT = "flowscribe-dead-letter/1"


def to_record(message: AbstractIncomingMessage) -> dict[str, Any]:
    """One NDJSON line of ``dlq export``: every property and header, the exact body in base64."""
    props = {name: getattr(message, name) for name in (*PROPERTIES, "expiration", "user_id")}
    props["delivery_mode"] = int(message.delivery_mode or 0) or None
    if props["timestamp"] is not None:
        props["timestamp"] = props["timestamp"].isoformat()
    if props["expiration"] is not None:
        props["expiration"] = str(props["expiration"])
    return {
        "format": FORMAT,
        "message_id": message.message_id,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "properties": props,
        "headers": encode_value(dict(message.headers or {})),
        "body_sha256": hashlib.sha256(message.body).hexdigest(),
        "body_base64": base64.b64encode(message.body).decode("ascii"),
    }


class RecordError(ValueError):
    """A line of an export file that is not a dead-letter record."""


def from_record(record: Any) -> aio_pika.Message:
    """The message a record describes, ready to publish (persistent; see PROPERTIES for what is left out)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RecordError(f"not a {FORMAT} record")
    try:
        body = base64.b64decode(record["body_base64"], validate=True)
        props = dict(record.get("properties") or {})
        headers = decode_value(record.get("headers") or {})
    except (KeyError, TypeError, ValueError, AttributeError, decimal.InvalidOperation) as e:
        raise RecordError(f"malformed record: {type(e).__name__}: {e}") from None
    if not isinstance(headers, dict):
        raise RecordError("headers must be an object")
    if record.get("body_sha256") not in (None, hashlib.sha256(body).hexdigest()):
        raise RecordError("the body does not match its body_sha256 (file damaged or edited)")
    kwargs = {name: props.get(name) for name in PROPERTIES}
    if kwargs["timestamp"] is not None:
        try:
            kwargs["timestamp"] = datetime.datetime.fromisoformat(kwargs["timestamp"])
        except (TypeError, ValueError):
            raise RecordError(f"timestamp {kwargs['timestamp']!r} is not ISO 8601") from None
    for key in BROKER_HEADERS:
        headers.pop(key, None)
    return aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **kwargs)


_TAGS = ("$datetime", "$bytes", "$decimal", "$table")


def encode_value(value: Any) -> Any:
    """An AMQP field value as JSON (see the module docstring)."""
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dict):
        table = {str(k): encode_value(v) for k, v in value.items()}
        return {"$table": table} if len(table) == 1 and next(iter(table)) in _TAGS else table
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    return value  # str, int, float, bool, None


def decode_value(value: Any) -> Any:
    """The inverse of ``encode_value``."""
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "$datetime":
                return datetime.datetime.fromisoformat(inner)
            if tag == "$bytes":
                return bytearray(base64.b64decode(inner, validate=True))
            if tag == "$decimal":
                return decimal.Decimal(inner)
            if tag == "$table":
                return {k: decode_value(v) for k, v in inner.items()}
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    return value
