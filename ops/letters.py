"""One dead letter and what its headers say about it: why, when, how often, since when.

The worker's own headers (x-flowscribe-error...) when it dead-lettered the
message; the broker's ``x-death`` when the broker did (delivery limit).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ops.messages import replays
from ops.redecode import analysis_id
from runtime.times import as_utc
from schemas import topology


@dataclasses.dataclass(slots=True)
class DeadLetter:
    """One message in the dead-letter queue, and what its headers say about it."""

    position: int  # 1-based, in queue order when read
    message: AbstractIncomingMessage
    dead_lettered_at: datetime.datetime | None
    reason: str
    stage: str  # decode | validate | database | retry (the worker's), or broker
    attempts: int | None
    received_at: datetime.datetime | None

    @property
    def message_id(self) -> str:
        return self.message.message_id or ""

    @classmethod
    def of(cls, position: int, message: AbstractIncomingMessage) -> DeadLetter:
        headers = message.headers or {}
        death = _last_death(headers)
        error = headers.get(topology.HEADER_ERROR)
        if isinstance(error, str):
            reason, stage = error, str(headers.get(topology.HEADER_ERROR_STAGE, ""))
        elif death is not None:
            reason = f"{death.get('reason', 'unknown')} (broker, from {death.get('queue', '?')})"
            stage = "broker"
        else:
            reason, stage = "unknown (no x-flowscribe-error or x-death header)", ""
        dead_lettered_at = _time(headers.get(topology.HEADER_DEAD_LETTERED_AT))
        if dead_lettered_at is None and death is not None:
            dead_lettered_at = _time(death.get("time"))
        return cls(
            position=position,
            message=message,
            dead_lettered_at=dead_lettered_at,
            reason=reason,
            stage=stage,
            attempts=_attempts(headers, death),
            received_at=_time(headers.get(topology.HEADER_RECEIVED_AT)),
        )

    def summary(self) -> dict[str, Any]:
        """The row of ``dlq list`` (and its JSON object)."""
        return {
            "position": self.position,
            "message_id": self.message_id,
            "dead_lettered_at": self.dead_lettered_at,
            "reason": self.reason,
            "stage": self.stage,
            "attempts": self.attempts,
            "replays": replays(self.message),
            "received_at": self.received_at,
            "size": len(self.message.body),
            "content_type": self.message.content_type,
            "analysis_id": analysis_id(self.message),
        }


def _last_death(headers: dict[str, Any]) -> dict[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]  # the broker keeps the most recent first
    return None


def _attempts(headers: dict[str, Any], death: dict[str, Any] | None) -> int | None:
    value = headers.get(topology.HEADER_ATTEMPTS)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if death is not None and isinstance(count := death.get("count"), int):
        if death.get("reason") == "delivery_limit" and death.get("queue") == topology.CALLBACK_QUEUE:
            # Each time it took every delivery the callbacks queue allows, plus the one over.
            return count * (topology.DELIVERY_LIMIT + 1)
        return count
    # Dead-lettered by a worker without a retry count: decode, validation and
    # data errors are dead-lettered at their first attempt.
    return 1 if topology.HEADER_ERROR in headers else None


def _time(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return as_utc(value)
    if isinstance(value, str):
        try:
            return as_utc(datetime.datetime.fromisoformat(value))
        except ValueError:
            return None
    return None
