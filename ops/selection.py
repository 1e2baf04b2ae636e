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
    if relative:
        return now - datetime.timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    try:
        value = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 timestamp nor an age like 15m, 2h, 3d") from None
    return as_utc(value)


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
