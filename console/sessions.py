"""Who is using the console: credentials checked in constant time, sessions held in memory.

A session exists from the first page (the login form needs a CSRF token too)
and is replaced by a fresh one at login, so an id planted before login is
worth nothing after it. Sessions live in this process only: a restart logs
everyone out, and the console runs as one replica (see deploy/).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from runtime.settings import ConsoleCredential

VIEW = "view"
OPERATE = "operate"

# Idle sessions expire; the store is bounded so that anonymous visitors cannot fill memory.
IDLE_SECONDS = 8 * 3600
MAX_SESSIONS = 10_000


@dataclasses.dataclass(slots=True)
class Session:
    id: str = dataclasses.field(repr=False)
    csrf: str = dataclasses.field(repr=False)
    user: str | None = None  # None: not logged in (yet)
    role: str | None = None
    seen: float = 0.0

    @property
    def may_operate(self) -> bool:
        return self.role == OPERATE


class SessionStore:
    """Sessions by id, least recently seen evicted first."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS, max_sessions: int = MAX_SESSIONS) -> None:
        self._idle = idle_seconds
        self._max = max_sessions
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def new(self, user: str | None = None, role: str | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, role, time.monotonic())
        self._sessions[session.id] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self._idle:
            del self._sessions[session_id]
            return None
        session.seen = now
        self._sessions.move_to_end(session_id)
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def _digest(text: str) -> bytes:
    # Equal-length digests: the comparison time says nothing about the token's length either.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def authenticate(credentials: Iterable[ConsoleCredential], presented: str) -> ConsoleCredential | None:
    """The credential whose token is ``presented``; every one is compared, in constant time."""
    wanted = _digest(presented)
    found = None
    for credential in credentials:
        if hmac.compare_digest(_digest(credential.token), wanted):
            found = credential
    return found


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(_digest(a), _digest(b))
