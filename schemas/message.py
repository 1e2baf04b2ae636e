"""The callback message: how the gateway publishes a callback, and how it is read back.

One factory builds it (``callback_message``: the gateway, ``reprocess``, the
bench's broker ceiling, the tests) and one reader parses it (``to_callback``:
the worker, ``dlq`` re-checks). Exactly-once rests on both sides agreeing: the
message id is the callback's identity, ``x-flowscribe-received-at`` its version
(microseconds: versions of one analysis are ordered by it), and
``x-flowscribe-body-sha256`` proves the body arrived as it was received.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from runtime.times import as_utc
from runtime.trace_names import sampled_trace_id
from schemas import topology
from schemas.decoding import decode_payload
from schemas.payload import ConversationAnalysis, Payload

# The media types a callback may be sent as (a `charset` parameter aside): the
# gateway answers 415 to any other, the console's search offers these.
CONTENT_TYPES = ("application/json", "application/xml", "text/json", "text/xml")


def callback_message(
    body: bytes, content_type: str, *, message_id: str, received_at: datetime.datetime, reprocess: bool = False
) -> aio_pika.Message:
    """A callback body as published: persistent, its id, its receive time, the digest of the exact bytes.

    ``reprocess`` marks a stored callback sent through the worker again (``flowscribe-ingest reprocess``).
    """
    received_at = received_at.astimezone(datetime.UTC)
    headers: dict[str, aio_pika.abc.FieldValue] = {
        topology.HEADER_RECEIVED_AT: received_at.isoformat(timespec="microseconds"),
        topology.HEADER_BODY_SHA256: hashlib.sha256(body).hexdigest(),
    }
    if reprocess:
        headers[topology.HEADER_REPROCESS] = "1"
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        content_type=content_type,
        timestamp=received_at,
        headers=headers,
    )


class InvalidMessage(Exception):
    """The message's properties are not those the gateway sets (not the body's fault)."""


@dataclasses.dataclass(slots=True)
class Callback:
    """One delivered message, decoded: what the store needs to decide and write."""

    id: uuid.UUID  # the gateway's message id
    received_at: datetime.datetime
    content_type: str
    body_sha256: str
    body: bytes
    payload: Payload
    reprocess: bool = False  # re-derive a stored callback's rows (see store.batch)
    trace_id: str | None = None  # the sampled trace it travelled in (runtime.tracing), for the ledger

    @property
    def analysis(self) -> ConversationAnalysis | None:
        return self.payload.ConversationAnalysisModel

    @property
    def job_id(self) -> uuid.UUID | None:
        job = self.payload.JobStatus
        return job.JobID if job is not None else None

    @property
    def job_failed(self) -> bool:
        """Flowscribe reports failure, or sent no analysis to store."""
        job = self.payload.JobStatus
        return (
            self.payload.Success is False
            or (job is not None and job.Success is False)
            or self.analysis is None
        )

    @property
    def version(self) -> tuple[datetime.datetime, uuid.UUID]:
        """Order of versions of one analysis: received later wins; the id breaks ties."""
        return (self.received_at, self.id)


def to_callback(message: AbstractIncomingMessage) -> Callback:
    """Check the message's properties and decode its body; raises InvalidMessage or PayloadDecodeError."""
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
    return Callback(callback_id, received_at, message.content_type or "", digest, body, payload, reprocess,
                    sampled_trace_id(headers))


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
    return as_utc(value)
