"""What every request passes through: headers that keep pages inert, who is asking, and CSRF.

- Every response carries a strict Content-Security-Policy (scripts and styles
  only from our own /static, nothing inline, no framing, forms only to us),
  ``nosniff``, no referrer, and ``no-store`` (pages show callback data).
- Login: by a console token (``FLOWSCRIBE_CONSOLE_TOKENS``), or, in
  trusted-header mode, the user an authenticating proxy names in
  ``FLOWSCRIBE_CONSOLE_USER_HEADER`` (believed only from FLOWSCRIBE_TRUSTED_PROXIES).
- Every POST must carry the session's CSRF token; cross-site requests are
  refused outright where the browser says so (``Sec-Fetch-Site``). The session
  cookie is HttpOnly, SameSite=Lax (links from elsewhere open the console logged
  in; cross-site POSTs come without it), and Secure when the request came over TLS.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable

import aiohttp_session
from aiohttp import web

from console import keys
from console.sessions import OPERATE, VIEW, Session, anonymous, begin, same_secret, stand_in

log = logging.getLogger("console")

CSRF_FIELD = "csrf"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
       " form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Served without a session: the login form, static files, probes.
PUBLIC = re.compile(r"^/(login|static/.*|healthz|readyz)$")
_USER = re.compile(r"[A-Za-z0-9._@+-]{1,200}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as e:
        response = e
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[keys.SETTINGS]
    if settings.console_user_header and request.path == "/login":
        raise web.HTTPSeeOther("/")  # no login form: the proxy logs people in
    storage = request.app[keys.SESSION_STORAGE]
    stored = await aiohttp_session.get_session(request)
    session = _logged_in(request, stored)
    if settings.console_user_header and not PUBLIC.match(request.path):
        # Probes and static files come without the proxy (a kubelet asks /healthz directly).
        user = _proxy_user(request)
        if session is None or session.user != user:
            await storage.forget(request, stored)
            stored = await aiohttp_session.new_session(request)
            begin(stored, user)
            session = _logged_in(request, stored)
    elif session is None:
        csrf = stored.get("csrf")
        if "user" not in stored and isinstance(csrf, str):
            session = Session(csrf)  # the login form's session
        elif request.method == "GET" and request.path == "/login":
            await storage.forget(request, stored)  # (a login that no longer holds)
            stored = await aiohttp_session.new_session(request)
            session = anonymous(stored)  # the login form's CSRF token needs a session
        else:
            # Anyone else without a session is sent to the login form or refused; nothing is stored for them and
            # no cookie is set: a request that arrived without the operator's cookie must not replace it.
            session = stand_in()
    assert session is not None
    request[keys.SESSION] = session
    if session.user is None and not PUBLIC.match(request.path):
        if request.method in ("GET", "HEAD"):
            target = request.rel_url.path_qs
            raise web.HTTPSeeOther("/login" + (f"?next={_quote(target)}" if target != "/" else ""))
        raise web.HTTPForbidden(text="log in first")
    return await handler(request)


def _logged_in(request: web.Request, stored: aiohttp_session.Session) -> Session | None:
    """The stored session as the pages see it, if it is a login that still holds; else None.

    The role is read from the settings on every request, and a token login holds only while that login
    exists with the same token: removing it from the settings (or changing its token) ends its sessions.
    """
    user = stored.get("user")
    if not isinstance(user, str) or not isinstance(stored.get("csrf"), str):
        return None
    settings = request.app[keys.SETTINGS]
    if settings.console_user_header:
        return Session(stored["csrf"], user, OPERATE if user in settings.console_operators else VIEW)
    credential = next((c for c in settings.console_tokens if c.name == user), None)
    remembered = stored.get("token")
    if credential is None or not isinstance(remembered, str) or not same_secret(
            remembered, request.app[keys.SESSION_STORAGE].token_digest(credential.token)):
        return None
    return Session(stored["csrf"], user, credential.role)


def _quote(path: str) -> str:
    import urllib.parse

    return urllib.parse.quote(path, safe="")


def _proxy_user(request: web.Request) -> str:
    settings = request.app[keys.SETTINGS]
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        peer = None
    if peer is None or not any(peer in network for network in settings.trusted_proxies):
        raise web.HTTPForbidden(text="this console accepts requests only through its authenticating proxy")
    user = request.headers.get(settings.console_user_header, "")
    if not _USER.fullmatch(user):
        raise web.HTTPForbidden(text="the authenticating proxy named no (valid) user")
    return user


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        session: Session = request[keys.SESSION]
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            log.warning("console request refused", extra={"why": "cross-site", "path": request.path,
                                                          "user": session.user})
            raise web.HTTPForbidden(text="cross-site request refused")
        form = await request.post()
        token = form.get(CSRF_FIELD)
        if not isinstance(token, str) or not same_secret(token, session.csrf):
            log.warning("console request refused", extra={"why": "missing or wrong CSRF token",
                                                          "path": request.path, "user": session.user})
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")
    return await handler(request)


def session_of(request: web.Request) -> Session:
    session: Session = request[keys.SESSION]
    return session


def require_operator(request: web.Request) -> Session:
    """The session, if it may act; else 403 (and the refusal is logged)."""
    session = session_of(request)
    if not session.may_operate:
        log.warning("console action refused", extra={"why": "view role", "path": request.path,
                                                     "user": session.user})
        raise web.HTTPForbidden(text=f"{session.user} may only view: this needs the operate role")
    return session
