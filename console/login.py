"""Logging in and out with a console token (in trusted-header mode the proxy has done it)."""

from __future__ import annotations

from aiohttp import web

from console import keys
from console.audit import audit
from console.pages import render
from console.redirects import local_target
from console.security import COOKIE, session_of, set_session_cookie
from console.sessions import authenticate

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
        audit(request, "console login refused")  # never the token itself
        return render(
            "login.html", request, {"next": target, "error": "That token is not a console login."}, status=401
        )
    store = request.app[keys.SESSIONS]
    store.drop(session_of(request).id)
    session = store.new(credential.name, credential.role)
    request[keys.SESSION] = session
    audit(request, "console login")
    redirect = web.HTTPSeeOther(target)
    set_session_cookie(request, redirect, session)
    raise redirect


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.StreamResponse:
    audit(request, "console logout")
    request.app[keys.SESSIONS].drop(session_of(request).id)
    redirect = web.HTTPSeeOther("/login")
    redirect.del_cookie(COOKIE, path="/")
    raise redirect
