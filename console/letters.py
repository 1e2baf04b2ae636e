"""Dead letters: the selection ``dlq list`` takes, each letter's reason, stage, attempts and body;
previews of replay and purge; export of the selection as the command line's NDJSON.

Every read goes through ops' reader (``DeadLetterQueue``: the whole queue held
unacked and handed back in order, one reader at a time under the
``flowscribe.ops.lock`` queue). A page shows at most ``SHOWN`` letters of a
selection and counts the rest; nothing sends a whole queue to the browser.
"""

from __future__ import annotations

import collections
import datetime
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from console import bodies, commands, forms, keys
from console.audit import audit
from console.callbacks import attachment
from console.pages import render
from console.security import require_operator
from ops import connect
from ops.dead_letters import DeadLetterQueue
from ops.errors import OpsError
from ops.letters import DeadLetter
from ops.messages import encode_value
from ops.redecode import recheck
from ops.render import Console
from ops.selection import Selector, normalise_id

routes = web.RouteTableDef()

SHOWN = 100
BODY_PREVIEW = 4096
PROPERTIES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
              "reply_to", "expiration", "timestamp", "type", "app_id", "user_id")


def _view(letter: DeadLetter, body_chars: int) -> dict[str, Any]:
    body = letter.message.body
    head = body if len(body) <= 4 * body_chars else body[:body_chars]
    return {**letter.summary(), "body": bodies.shown(head, len(body), letter.message.content_type, body_chars)}


async def _read(request: web.Request, selector: Selector) -> tuple[list[dict[str, Any]], int, int]:
    """The first SHOWN letters the selection chooses (as views), how many it chooses, the queue's depth."""
    shown: list[dict[str, Any]] = []
    matched = 0
    newest: collections.deque[DeadLetter] = collections.deque(maxlen=5)
    settings = request.app[keys.SETTINGS]
    async with connect.broker(settings) as (connection, _channel, _declared):
        async with DeadLetterQueue(connection) as queue:
            async for letter in queue.select(selector):
                matched += 1
                newest.append(letter)
                if len(shown) < SHOWN:
                    shown.append(_view(letter, BODY_PREVIEW))
            depth = queue.depth
    if not selector.narrows and selector.limit is None:
        # A whole read: the Overview's glance at the newest comes for free.
        request.app[keys.GLANCE].remember(depth, [letter.summary() for letter in reversed(newest)])
    return shown, matched, depth


def _page(request: web.Request, context: dict[str, Any], status: int = 200) -> web.StreamResponse:
    context.setdefault("fields", forms.selector_fields(request.query))
    context.setdefault("letters", [])
    context.setdefault("matched", 0)
    context.setdefault("depth", None)
    context.setdefault("error", None)
    context["shown_max"] = SHOWN
    return render("letters.html", request, context, status=status)


@routes.get("/dead-letters", name="dead_letters")
async def listing(request: web.Request) -> web.StreamResponse:
    try:
        selector = forms.selector(request.query)
    except forms.FormError as e:
        return _page(request, {"error": str(e)}, 400)
    try:
        letters, matched, depth = await _read(request, selector)
    except OpsError as e:
        return _page(request, {"error": str(e)}, 503)
    return _page(request, {"letters": letters, "matched": matched, "depth": depth})


@routes.get("/dead-letters/export", name="export")
async def export(request: web.Request) -> web.StreamResponse:
    """``dlq export`` of the selection, downloaded: the same NDJSON file the command writes."""
    try:
        selector = forms.selector(request.query)
    except forms.FormError as e:
        return _page(request, {"error": str(e)}, 400)
    with tempfile.TemporaryDirectory(prefix="flowscribe-console-") as directory:
        path = Path(directory) / "dead-letters.ndjson"
        output = io.StringIO()
        try:
            await commands.export(request.app[keys.SETTINGS], selector, path, Console(
                output, output, io.BytesIO(), interactive=False, live=False))
        except OpsError as e:
            return _page(request, {"error": str(e)}, 503)
        await audit(request, "export", selection=forms.describe_selector(selector), result=output.getvalue().strip())
        data = path.read_bytes()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return attachment(data, f"dead-letters-{stamp}.ndjson", "application/x-ndjson")


async def _one(request: web.Request) -> list[DeadLetter]:
    message_id = normalise_id(request.match_info["id"])
    async with connect.broker(request.app[keys.SETTINGS]) as (connection, _channel, _declared):
        async with DeadLetterQueue(connection) as queue:
            return [letter async for letter in queue.select(Selector(ids=frozenset([message_id])))]


@routes.get("/dead-letters/{id}", name="dead_letter")
async def one(request: web.Request) -> web.StreamResponse:
    try:
        copies = await _one(request)
    except OpsError as e:
        return _page(request, {"error": str(e)}, 503)
    if not copies:
        raise web.HTTPNotFound(text="no dead letter with that message id (replayed or purged?)")
    views = []
    for letter in copies:
        message = letter.message
        _, error = recheck(message)
        views.append({
            **_view(letter, bodies.SHOWN_CHARS),
            "decodes": error is None, "decode_error": error,
            "properties": [(name, getattr(message, name)) for name in PROPERTIES
                           if getattr(message, name) is not None],
            "headers": [(key, v if isinstance(v := encode_value(message.headers[key]), str)
                         else json.dumps(v, ensure_ascii=False)) for key in sorted(message.headers or {})],
        })
    return render("letter.html", request, {"copies": views})


@routes.get("/dead-letters/{id}/body", name="dead_letter_body")
async def body(request: web.Request) -> web.StreamResponse:
    try:
        copies = await _one(request)
    except OpsError as e:
        return _page(request, {"error": str(e)}, 503)
    if not copies:
        raise web.HTTPNotFound(text="no dead letter with that message id")
    await audit(request, "download", what="dead letter body", message_id=copies[0].message_id)
    return attachment(copies[0].message.body, f"dead-letter-{copies[0].message_id}.body")


async def _chosen(request: web.Request) -> tuple[Selector, dict[str, str]]:
    form = await request.post()
    fields = forms.selector_fields(form)
    try:
        selector = forms.selector(form)
    except forms.FormError as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    if not selector.narrows:
        raise web.HTTPBadRequest(text="say which dead letters: ids, a reason, a time window, or all")
    return selector, fields


@routes.post("/dead-letters/replay", name="replay")
async def replay_preview(request: web.Request) -> web.StreamResponse:
    """The ``dlq replay --dry-run`` of the selection, kept for confirmation."""
    session = require_operator(request)
    selector, fields = await _chosen(request)
    force = (await request.post()).get("force") in ("1", "on")
    try:
        predictions = await commands.replay_preview(request.app[keys.SETTINGS], selector)
    except OpsError as e:
        return _page(request, {"error": str(e), "fields": fields}, 503)
    rows = [{"position": p.position, "message_id": p.message_id, "reason": p.reason,
             "analysis_id": p.analysis_id, "error": p.error, "effect": p.effect} for p in predictions]
    tally = dict(collections.Counter(p.effect for p in predictions))
    preview = request.app[keys.PREVIEWS].add(
        "replay", session.user or "", fields, frozenset(p.message_id for p in predictions), rows, tally,
        {"selector": selector, "force": force},
    )
    await audit(request, "preview", action="replay", selection=forms.describe_selector(selector),
          chosen=len(rows), force=force)
    raise web.HTTPSeeOther(f"/previews/{preview.token}")


@routes.post("/dead-letters/purge", name="purge")
async def purge_preview(request: web.Request) -> web.StreamResponse:
    """The letters a purge of the selection would delete (``dlq purge`` shows the same before asking)."""
    session = require_operator(request)
    selector, fields = await _chosen(request)
    rows: list[dict[str, Any]] = []
    try:
        async with connect.broker(request.app[keys.SETTINGS]) as (connection, _channel, _declared):
            async with DeadLetterQueue(connection) as queue:
                rows = [letter.summary() async for letter in queue.select(selector)]
    except OpsError as e:
        return _page(request, {"error": str(e), "fields": fields}, 503)
    preview = request.app[keys.PREVIEWS].add(
        "purge", session.user or "", fields, frozenset(r["message_id"] for r in rows), rows,
        {"purge": len(rows)}, {"selector": selector},
    )
    await audit(request, "preview", action="purge", selection=forms.describe_selector(selector), chosen=len(rows))
    raise web.HTTPSeeOther(f"/previews/{preview.token}")


