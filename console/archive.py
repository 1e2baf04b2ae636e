"""Archive: what the archived bodies take, and ``prune`` with the same preview-then-confirm as replay.

The preview is ``prune --dry-run``'s summary for the chosen age, kept with the
cut-off as an instant: the confirmed job prunes what was received before that
instant (the set the preview counted; rows a worker holds at that moment are
skipped, as the command does) and runs as ``prune`` runs, in small
transactions that yield to the workers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from console import commands, forms, keys
from console.audit import audit
from console.pages import render
from console.security import require_operator
from store import archive

routes = web.RouteTableDef()

DEFAULT_AGE = "90d"


async def _page(request: web.Request, context: dict[str, Any], status: int = 200) -> web.StreamResponse:
    async with request.app[keys.POOL].acquire() as conn:
        context["sizes"] = await archive.sizes(conn)
    context.setdefault("fields", {"older_than": DEFAULT_AGE})
    context.setdefault("error", None)
    return render("archive.html", request, context, status=status)


@routes.get("/archive", name="archive")
async def page(request: web.Request) -> web.StreamResponse:
    return await _page(request, {})


@routes.post("/archive/prune", name="prune")
async def prune_preview(request: web.Request) -> web.StreamResponse:
    session = require_operator(request)
    form = await request.post()
    fields = {name: value.strip() for name in ("older_than", "ledger")
              if isinstance(value := form.get(name), str) and value.strip() and "\x00" not in value}
    try:
        cutoff, ledger = forms.prune_choice(form)
    except forms.FormError as e:
        return await _page(request, {"fields": fields, "error": str(e)}, 400)
    summary = await commands.prune_preview(request.app[keys.SETTINGS], cutoff, ledger=ledger)
    chosen = summary["bodies_pruned"] + summary["ledger_rows_deleted"]
    preview = request.app[keys.PREVIEWS].add(
        "prune", session.user or "", fields, frozenset(), [], {}, {"older_than": cutoff, "ledger": ledger,
                                                                  "summary": summary, "chosen": chosen},
    )
    await audit(request, "preview", action="prune", older_than=cutoff.isoformat(), ledger=ledger,
                bodies=summary["bodies_pruned"], ledger_rows=summary["ledger_rows_deleted"], bytes=summary["bytes"])
    raise web.HTTPSeeOther(f"/previews/{preview.token}")
