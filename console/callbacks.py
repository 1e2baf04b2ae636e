"""Callbacks: search the ledger; one callback with its body, stored rows, versions; reprocess it."""

from __future__ import annotations

import collections
import uuid
from typing import Any

from aiohttp import web

from console import bodies, commands, forms, keys, ledger
from console.audit import audit
from console.pages import render
from console.security import require_operator
from schemas.message import CONTENT_TYPES
from store.outcomes import RECORDED as OUTCOMES

routes = web.RouteTableDef()



def _id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such callback") from None


@routes.get("/callbacks", name="callbacks")
async def search(request: web.Request) -> web.StreamResponse:
    fields = forms.ledger_fields(request.query)
    context: dict[str, Any] = {"fields": fields, "outcomes": OUTCOMES, "content_types": CONTENT_TYPES,
                               "rows": [], "next": None, "error": None, "paged": "after" in request.query}
    try:
        found = forms.ledger_filter(request.query)
        after = forms.cursor(request.query)
    except forms.FormError as e:
        context["error"] = str(e)
        return render("callbacks.html", request, context, status=400)
    async with request.app[keys.POOL].acquire() as conn:
        rows, next_cursor = await ledger.search(conn, found, after)
    context["rows"] = rows
    context["next"] = {**fields, "after": next_cursor.encode()} if next_cursor else None
    return render("callbacks.html", request, context)


@routes.get("/callbacks/{id}", name="callback")
async def show(request: web.Request) -> web.StreamResponse:
    message_id = _id(request)
    async with request.app[keys.POOL].acquire() as conn:
        row = await ledger.callback(conn, message_id)
        if row is None:
            raise web.HTTPNotFound(
                text="no such callback in the ledger (a callback that never landed is a dead letter)")
        history = await ledger.versions(conn, row["analysis_id"]) if row["analysis_id"] else []
        stored = await ledger.stored(conn, row["analysis_id"], row["job_id"])
    # No body: pruned from the archive (the ledger row stays).
    body = None if row["body_head"] is None else bodies.shown(bytes(row["body_head"]), row["size"], row["content_type"])
    trace_url = request.app[keys.SETTINGS].trace_url
    return render("callback.html", request, {
        "row": row, "body": body, "history": history, "stored": stored,
        "trace_link": trace_url.replace("{trace_id}", row["trace_id"]) if trace_url and row["trace_id"] else None,
    })


@routes.get("/callbacks/{id}/body", name="callback_body")
async def download(request: web.Request) -> web.StreamResponse:
    message_id = _id(request)
    async with request.app[keys.POOL].acquire() as conn:
        data = await ledger.body(conn, message_id)
    if data is None:
        raise web.HTTPNotFound(text="no such callback, or its body was pruned from the archive")
    await audit(request, "download", what="callback body", message_id=str(message_id))
    return attachment(data, f"callback-{message_id}.body")


def attachment(data: bytes, filename: str, content_type: str = "application/octet-stream") -> web.Response:
    """Exact bytes as a download: never rendered by the browser, whatever they contain."""
    return web.Response(body=data, content_type=content_type, headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Security-Policy": "default-src 'none'; sandbox",
    })


@routes.post("/callbacks/{id}/reprocess", name="reprocess")
async def reprocess_preview(request: web.Request) -> web.StreamResponse:
    session = require_operator(request)
    message_id = str(_id(request))
    async with request.app[keys.POOL].acquire() as conn:
        rows = await commands.reprocess_preview(conn, [message_id])
    if not rows:
        raise web.HTTPNotFound(text="no such callback")
    tally = collections.Counter(str(r["effect"]).partition(":")[0] for r in rows)
    preview = request.app[keys.PREVIEWS].add("reprocess", session.user or "", {"message_id": message_id},
                                             frozenset([message_id]), rows, dict(tally))
    await audit(request, "preview", action="reprocess", selection={"ids": [message_id]}, chosen=len(rows))
    raise web.HTTPSeeOther(f"/previews/{preview.token}")
