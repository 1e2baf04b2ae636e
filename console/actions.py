"""Previews and their confirmation, and the jobs that carry confirmed actions out."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from console import commands, forms, keys
from console.audit import audit
from console.jobs import Command
from console.pages import render
from console.security import require_operator

routes = web.RouteTableDef()

PREVIEW_ROWS_SHOWN = 500


@routes.get("/previews/{token}", name="preview")
async def preview(request: web.Request) -> web.StreamResponse:
    session = require_operator(request)
    found = request.app[keys.PREVIEWS].get(request.match_info["token"], session.user or "")
    if found is None:
        raise web.HTTPNotFound(text="this preview has expired or was used; preview again")
    return render("preview.html", request, {
        "preview": found, "rows": found.rows[:PREVIEW_ROWS_SHOWN], "shown_max": PREVIEW_ROWS_SHOWN,
    })


@routes.post("/previews/{token}/confirm", name="confirm")
async def confirm(request: web.Request) -> web.StreamResponse:
    session = require_operator(request)
    found = request.app[keys.PREVIEWS].take(request.match_info["token"], session.user or "")
    if found is None:
        raise web.HTTPNotFound(text="this preview has expired or was used; preview again")
    if not (found.options["chosen"] if found.kind == "prune" else found.ids):
        raise web.HTTPBadRequest(text="the preview chose nothing: there is nothing to do")
    settings = request.app[keys.SETTINGS]
    selection: dict[str, Any]
    command: Command
    if found.kind == "prune":
        # What the preview counted: received before the same instant.
        selection = {"older_than": found.options["older_than"].isoformat(), "ledger": found.options["ledger"]}
        command = commands.prune_command(settings, found.options["older_than"], ledger=found.options["ledger"])
    elif found.kind == "reprocess":
        selection = {"ids": sorted(found.ids)}
        command = commands.reprocess_command(settings, found.ids)
    else:
        # Exactly the messages shown: their ids, and still the criteria that chose them.
        selector = dataclasses.replace(found.options["selector"], ids=found.ids, every=False, limit=None)
        selection = forms.describe_selector(selector)
        if found.kind == "replay":
            command = commands.replay_command(settings, selector, force=bool(found.options.get("force")))
        else:
            command = commands.purge_command(settings, selector)
    job = request.app[keys.JOBS].start(found.kind, session.user or "", selection, command)
    await audit(request, "action", action=found.kind, job=job.id, selection=selection,
          options={k: v for k, v in found.options.items() if k != "selector"})
    raise web.HTTPSeeOther(f"/jobs/{job.id}")


@routes.get("/jobs", name="jobs")
async def jobs(request: web.Request) -> web.StreamResponse:
    return render("jobs.html", request, {"jobs": request.app[keys.JOBS].recent()})


@routes.get("/jobs/{id}", name="job")
async def job(request: web.Request) -> web.StreamResponse:
    found = request.app[keys.JOBS].get(request.match_info["id"])
    if found is None:
        raise web.HTTPNotFound(text="no such job (the console keeps the last ones since it started)")
    return render("job.html", request, {"job": found})
