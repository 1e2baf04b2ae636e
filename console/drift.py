"""Schema drift: what ``flowscribe-ingest drift`` reports (fields and objects the payload Structs do not know),
each with the README runbook's next step beside it and its example callback linked.

The rows and their status (new / known) are ``ops.drift.classified``'s, as the command prints them. Names came
from the vendor's bodies: made printable there, escaped by the template like every value.
"""

from __future__ import annotations

from aiohttp import web

from console import keys
from console.pages import render
from ops.drift import KNOWN, NEW, classified
from store import drift as drift_table

routes = web.RouteTableDef()


@routes.get("/drift", name="drift")
async def page(request: web.Request) -> web.StreamResponse:
    async with request.app[keys.POOL].acquire() as conn:
        rows = await drift_table.recorded(conn)
    if rows is None:
        raise web.HTTPServiceUnavailable(text="the database has no flowscribe.schema_drift table:"
                                              " run `flowscribe-ingest migrate`")
    found = classified(rows)
    return render("drift.html", request, {
        "rows": found, "new": sum(1 for r in found if r["status"] == NEW), "NEW": NEW, "KNOWN": KNOWN,
        "sample_rate": request.app[keys.SETTINGS].drift_sample_rate,
    })
