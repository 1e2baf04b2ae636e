"""The console's audit trail: each login, preview, action, its result, export and download, saying who did what
to which selection; kept in PostgreSQL (store.audit: shared by replicas, queryable, the Audit page) and logged
on the ``console.audit`` logger. Facts are what the operator chose and what the command reported: never a
token, never a body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web

from console import forms, keys
from console.jobs import Job
from console.pages import render
from console.security import session_of
from store import audit as trail

log = logging.getLogger("console.audit")
routes = web.RouteTableDef()


async def audit(request: web.Request, event: str, *, action: str | None = None, **facts: Any) -> None:
    session = session_of(request)
    await record(request.app[keys.POOL], event, action=action, username=session.user, role=session.role,
                 remote=request.remote, facts=facts)


async def record(pool: asyncpg.Pool, event: str, *, action: str | None, username: str | None, role: str | None,
                 remote: str | None, facts: dict[str, Any]) -> None:
    log.info(f"console {event}", extra={"user": username, "role": role, "remote": remote,
                                        **({"action": action} if action else {}), **facts})
    await _store(pool, event, action=action, username=username, role=role, remote=remote, facts=facts)


async def _store(pool: asyncpg.Pool, event: str, *, action: str | None, username: str | None, role: str | None,
                 remote: str | None, facts: dict[str, Any]) -> None:
    try:
        async with pool.acquire(timeout=5) as conn:
            await trail.record(conn, event, action=action, username=username, role=role, remote=remote,
                               facts=facts)
    except Exception:  # the log line above keeps the entry; the operator's request goes on
        log.exception("console audit entry not stored in the database", extra={"audit_event": event})


def on_job_finished(app: web.Application) -> Callable[[Job], Awaitable[None]]:
    """What Jobs calls when a job ends: its result into the trail (Jobs logs it)."""

    async def finished(job: Job) -> None:
        await _store(app[keys.POOL], "action finished", action=job.action, username=job.user, role=None,
                     remote=None, facts={"job": job.id, "exit_code": job.exit_code, "summary": job.summary})

    return finished


@routes.get("/audit", name="audit")
async def page(request: web.Request) -> web.StreamResponse:
    """The trail, newest first, filtered by user, event, action and time; any logged-in role may read it."""
    fields = forms.audit_fields(request.query)
    context: dict[str, Any] = {"fields": fields, "entries": [], "next": None, "error": None,
                               "users": [], "events": [], "actions": forms.AUDITED_ACTIONS,
                               "paged": "before" in request.query}
    async with request.app[keys.POOL].acquire() as conn:
        context["users"], context["events"] = await trail.names(conn)
        try:
            found, before = forms.audit_filter(request.query)
        except forms.FormError as e:
            context["error"] = str(e)
            return render("audit.html", request, context, status=400)
        entries, next_before = await trail.search(conn, found, before)
    context["entries"] = entries
    context["next"] = {**fields, "before": str(next_before)} if next_before else None
    return render("audit.html", request, context)
