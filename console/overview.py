"""Overview: callbacks over time by outcome, the queues, end-to-end lag, the newest dead letters."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from aiohttp import web

from console import chart, keys, ledger
from console.pages import render
from console.queues import depths
from runtime.amqp import BrokerUnavailable
from schemas import topology

log = logging.getLogger("console")
routes = web.RouteTableDef()

SPANS = (1, 3, 6, 12, 24)
LAG_WINDOW = datetime.timedelta(minutes=15)
REFRESH_SECONDS = 10


@routes.get("/", name="overview")
async def overview(request: web.Request) -> web.StreamResponse:
    hours_text = request.query.get("hours", "3")
    hours = int(hours_text) if hours_text in {str(span) for span in SPANS} else 3
    now = datetime.datetime.now(datetime.UTC)
    context: dict[str, Any] = {"hours": hours, "spans": SPANS, "now": now, "refresh": REFRESH_SECONDS,
                               "queues": None, "queue_error": None}
    try:
        context["queues"] = await depths(request.app[keys.BROKER])
    except (BrokerUnavailable, TimeoutError) as e:
        context["queue_error"] = f"RabbitMQ: {e or 'no answer'}"
    except Exception as e:  # noqa: BLE001 - a page, not a crash
        context["queue_error"] = f"RabbitMQ: {type(e).__name__}: {e}"
    glance = request.app[keys.GLANCE]
    if context["queues"] is not None:
        (dead,) = [q for q in context["queues"] if q.name == topology.DEAD_LETTER_QUEUE]
        await glance.refresh(dead.ready)
    context["glance"] = glance
    async with request.app[keys.POOL].acquire() as conn:
        counts = await ledger.per_bucket(conn, now - datetime.timedelta(hours=hours), chart.bucket_seconds(hours))
        lag = await ledger.lag(conn, now - LAG_WINDOW)
    context["chart"] = chart.bars(((r["bucket"], r["outcome"], r["n"]) for r in counts), now=now, hours=hours)
    context["lag"] = {"n": lag["n"], "p": lag["p"] or [None, None, None], "minutes": LAG_WINDOW.seconds // 60}
    return render("overview.html", request, context)
