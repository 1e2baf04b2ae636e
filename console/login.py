"""Logging in and out with a console token (in trusted-header mode the proxy has done it)."""

from __future__ import annotations

import aiohttp_session
from aiohttp import web

from console import keys
from console.audit import audit
from console.pages import render
from console.redirects import local_target
from console.security import session_of
from console.sessions import Session, authenticate, begin

routes = web.RouteTableDef()


@routes.get("/login", name="login")
async def login_form(request: web.Request) -> web.StreamResponse:
    if session_of(request).user is not None:
        raise web.HTTPSeeOther(local_target(request.query.get("next")))
    return render(
        "login.html", request, {"next": local_target(request.query.get("next")), "error": None}
    )


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    settings = request.app[keys.SETTINGS]
    token = form.get("token")
    credential = authenticate(settings.console_tokens, token) if isinstance(token, str) and token else None
    target = local_target(form.get("next"))
    if credential is None:
        await audit(request, "login refused")  # never the token itself
        return render(
            "login.html", request, {"next": target, "error": "That token is not a console login."}, status=401
        )
    storage = request.app[keys.SESSION_STORAGE]
    await storage.forget(request, await aiohttp_session.get_session(request))
    stored = await aiohttp_session.new_session(request)
    begin(stored, credential.name, storage.token_digest(credential.token))
    request[keys.SESSION] = Session(stored["csrf"], credential.name, credential.role)
    await audit(request, "login")
    raise web.HTTPSeeOther(target)


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.StreamResponse:
    await audit(request, "logout")
    (await aiohttp_session.get_session(request)).invalidate()  # its row is deleted: ended on every replica
    raise web.HTTPSeeOther("/login")
