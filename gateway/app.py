"""The aiohttp application: routes, the callback handler, health endpoints."""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
from collections.abc import AsyncIterator

from aiohttp import web

from flowscribe_ingest.amqp import BrokerSession
from flowscribe_ingest.settings import Settings
from gateway.publisher import PublishFailed, publish_callback

log = logging.getLogger("gateway")

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", BrokerSession)

CALLBACK_PATH = "/flowscribe/callback"

# Media types Flowscribe sends; the worker picks its decoder from the same value.
ACCEPTED_TYPES = frozenset({"application/json", "text/json", "application/xml", "text/xml"})
# A charset name as IANA registers them; anything else is not a charset we can decode.
_CHARSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}")


def create_app(settings: Settings) -> web.Application:
    # client_max_size makes aiohttp itself stop reading a body past the limit,
    # including chunked bodies that announce no length.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_broker_session)
    app.router.add_post(CALLBACK_PATH + "/{token}", receive_callback)
    # No token at all gets the same answer as a wrong one.
    app.router.add_post(CALLBACK_PATH, _unauthorized)
    app.router.add_post(CALLBACK_PATH + "/", _unauthorized)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _broker_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with BrokerSession(settings.amqp_url, "gateway") as broker:
        app[BROKER] = broker
        # Serve as soon as the broker is there, but do not wait for it forever:
        # until it is, callbacks get 503 and /readyz says so.
        with contextlib.suppress(TimeoutError):
            await broker.wait_ready(settings.publish_timeout)
        yield


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


def token_is_valid(presented: str, accepted: tuple[str, ...]) -> bool:
    """Constant-time against every accepted token (no early exit on a match)."""
    presented_bytes = presented.encode()
    valid = False
    for token in accepted:
        valid |= hmac.compare_digest(presented_bytes, token.encode())
    return valid


async def _unauthorized(request: web.Request) -> web.Response:
    return _error(401, "unknown or missing callback token")


async def receive_callback(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not token_is_valid(request.match_info["token"], settings.callback_tokens):
        return await _unauthorized(request)

    if request.content_type not in ACCEPTED_TYPES:
        return _error(
            415,
            f"unsupported content type {request.content_type!r};"
            f" send one of {', '.join(sorted(ACCEPTED_TYPES))}",
        )
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return _error(413, f"body larger than {settings.max_body_bytes} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body larger than {settings.max_body_bytes} bytes")
    if not body:
        return _error(400, "empty body")

    content_type = request.content_type
    if request.charset is not None and not _CHARSET.fullmatch(request.charset):
        return _error(415, "unsupported charset parameter")
    if request.charset:
        content_type = f"{content_type}; charset={request.charset}"
    try:
        message_id = await publish_callback(
            request.app[BROKER], body, content_type, settings.publish_timeout
        )
    except PublishFailed as e:
        log.warning("callback not accepted: broker did not confirm", extra={"reason": str(e), "bytes": len(body)})
        return _error(
            503, "the callback could not be stored; retry later", **{"Retry-After": str(settings.retry_after)}
        )
    log.info("callback accepted", extra={"message_id": message_id, "bytes": len(body), "content_type": content_type})
    return web.json_response({"id": message_id}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[BROKER].ready:
        return web.json_response({"status": "ready"})
    return _error(503, "broker not connected", **{"Retry-After": str(request.app[SETTINGS].retry_after)})
