"""Which dead letters a command acts on: ids, a reason, a time window, or all; and a limit."""

from __future__ import annotations

import dataclasses
import datetime
import re
import uuid
from typing import TYPE_CHECKING

from runtime.times import as_utc

if TYPE_CHECKING:
    from ops.letters import DeadLetter

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """An ISO 8601 timestamp (UTC if it has no offset) or an age: ``90s``, ``15m``, ``2h``, ``3d``."""
    now = now or datetime.datetime.now(datetime.UTC)
    relative = _RELATIVE.match(text.strip())
    try:
        if relative:
            return now - datetime.timedelta(**{_UNITS[relative[2]]: int(relative[1])})
        value = datetime.datetime.fromisoformat(text.strip())
    except (OverflowError, ValueError):
        # An age reaching before year 1 (1000000d) or a time PostgreSQL could not take is bad input, not a crash.
        if relative:
            raise ValueError(f"{text[:40]!r} reaches back before the year 1") from None
        raise ValueError(f"{text[:40]!r} is neither an ISO 8601 timestamp nor an age like 15m, 2h, 3d") from None
    try:
        # In UTC: 0001-01-01T00:00+05:00 is before the year 1 there, which no driver or database can take.
        return as_utc(value).astimezone(datetime.UTC)
    except OverflowError:
        raise ValueError(f"{text[:40]!r} is out of range") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    """Which dead letters a command acts on; all criteria given must hold."""

    ids: frozenset[str] = frozenset()
    reason: str | None = None  # substring of the reason, any case
    since: datetime.datetime | None = None  # dead-lettered at or after
    until: datetime.datetime | None = None  # dead-lettered before
    every: bool = False  # --all
    limit: int | None = None

    @property
    def narrows(self) -> bool:
        """Whether anything was asked for (commands that change the queue insist on it)."""
        return bool(self.ids or self.reason or self.since or self.until or self.every)

    def matches(self, letter: DeadLetter) -> bool:
        if self.ids and letter.message_id not in self.ids:
            return False
        if self.reason and self.reason.casefold() not in letter.reason.casefold():
            return False
        if self.since or self.until:
            at = letter.dead_lettered_at
            if at is None or (self.since and at < self.since) or (self.until and at >= self.until):
                return False
        return True


def normalise_id(text: str) -> str:
    """Message ids as the gateway writes them (lower-case UUIDs); other ids are taken as they are."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text
