"""Who is using the console: credentials checked in constant time, sessions kept in PostgreSQL.

Sessions are aiohttp-session's, stored by ``DatabaseStorage`` in
``flowscribe.console_sessions`` (store.sessions): every replica reads the
same rows, and a restart logs nobody out. The cookie carries only a random
session id; the row is found by HMAC-SHA256(``FLOWSCRIBE_CONSOLE_SESSION_SECRET``,
id), so the table holds no usable cookie and a new secret logs everyone out.
Logout deletes the row: the session ends on every replica at once (a
server-side record rather than signed cookies plus a revocation list: a list
would have to be read on every request anyway, and a record also carries the
idle expiry without rewriting the cookie on every page).

A session exists from the login form (which needs a CSRF token too) and is
replaced by a fresh one at login, so an id planted before login is worth
nothing after it. A logged-in session also remembers a digest of the token it
logged in with: when that login is removed from ``FLOWSCRIBE_CONSOLE_TOKENS``
or its token changes, its sessions end.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable

import aiohttp_session
import asyncpg
from aiohttp import web

from runtime.settings import ConsoleCredential, Settings
from store import sessions as stored

log = logging.getLogger("console")

VIEW = "view"
OPERATE = "operate"

COOKIE = "flowscribe_console"
# Idle sessions expire (and are deleted when the next session is created).
IDLE = datetime.timedelta(hours=8)


@dataclasses.dataclass(slots=True)
class Session:
    """What the pages need to know about the person asking."""

    csrf: str = dataclasses.field(repr=False)
    user: str | None = None  # None: not logged in (yet)
    role: str | None = None

    @property
    def may_operate(self) -> bool:
        return self.role == OPERATE


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


def session_secret(settings: Settings) -> bytes:
    """The secret setting, or (unset) one for this process only: sessions then end at its restart."""
    if settings.console_session_secret:
        return str(settings.console_session_secret[0]).encode()
    log.warning("console sessions end when this process stops and are not shared with other replicas:"
                " set FLOWSCRIBE_CONSOLE_SESSION_SECRET")
    return secrets.token_bytes(32)


class DatabaseStorage(aiohttp_session.AbstractStorage):
    """aiohttp-session's storage interface over ``flowscribe.console_sessions``."""

    def __init__(self, secret: bytes, pool: web.AppKey[asyncpg.Pool]) -> None:
        super().__init__(cookie_name=COOKIE, httponly=True, samesite="Lax", path="/")
        self._secret = secret
        self._pool = pool

    def key(self, session_id: str) -> bytes:
        return hmac.new(self._secret, session_id.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def token_digest(self, token: str) -> str:
        """What a session remembers of the token it logged in with (keyed: useless without the secret)."""
        return hmac.new(self._secret, b"token:" + token.encode(), hashlib.sha256).hexdigest()

    async def load_session(self, request: web.Request) -> aiohttp_session.Session:
        session_id = self.load_cookie(request)
        if session_id:
            async with request.app[self._pool].acquire() as conn:
                data = await stored.load(conn, self.key(session_id), IDLE)
            if data is not None:
                return aiohttp_session.Session(session_id, data={"session": data, "created": 0}, new=False)
        return aiohttp_session.Session(None, data=None, new=True)

    async def save_session(self, request: web.Request, response: web.StreamResponse,
                           session: aiohttp_session.Session) -> None:
        async with request.app[self._pool].acquire() as conn:
            if session.empty:  # invalidated: logged out
                if session.identity is not None:
                    await stored.delete(conn, self.key(session.identity))
                response.del_cookie(COOKIE, path="/")
                return
            session_id: str | None = session.identity
            if session_id is None:
                session_id = secrets.token_urlsafe(32)
                session.set_new_identity(session_id)
                await stored.create(conn, self.key(session_id), dict(session), IDLE)
            else:
                await stored.update(conn, self.key(session_id), dict(session))
        # Lax: a link from another site (an alert, a chat message) arrives with the cookie and finds the operator
        # logged in; a cross-site POST arrives without it, and every POST needs the session's CSRF token anyway.
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="Lax", path="/", secure=over_tls(request))

    async def forget(self, request: web.Request, session: aiohttp_session.Session) -> None:
        """Delete ``session`` now (a login replaces it: the id it had must be worth nothing after)."""
        if session.identity is not None:
            async with request.app[self._pool].acquire() as conn:
                await stored.delete(conn, self.key(session.identity))


def begin(stored: aiohttp_session.Session, user: str, token_digest: str | None = None) -> None:
    """Make a new (empty) aiohttp-session session a login: who, a fresh CSRF token, what it logged in with."""
    stored.update({"user": user, "csrf": secrets.token_urlsafe(32)})
    if token_digest is not None:
        stored["token"] = token_digest


def anonymous(stored: aiohttp_session.Session) -> Session:
    """A session for the login form: only a CSRF token."""
    stored["csrf"] = secrets.token_urlsafe(32)
    return Session(stored["csrf"])


def stand_in() -> Session:
    """For a request without a session: stored nowhere, no cookie; its CSRF token matches no form."""
    return Session(secrets.token_urlsafe(32))


def over_tls(request: web.Request) -> bool:
    # Believing X-Forwarded-Proto from anyone is safe here: it can only make the cookie stricter.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
