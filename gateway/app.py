"""The aiohttp application: routes, the callback handler, health endpoints.

A callback passes, in this order, the checks that cost the least and tell an
outsider the least first: source network (403) and rate (429), before anything
about the request is looked at; then the token (401) and the signature headers
(401); then type and coding (415) and announced size (413); only then is the
body invited (`100 Continue`) and read within its size, time (408) and the
process's byte budget (503), and decoded if compressed; then the signature over
the bytes (401). Only then is it published, and 202 only once confirmed.

A request refused before its body is read costs nothing more: the body is
neither inflated (aiohttp's decompression is off, see BODY_HANDLING) nor
drained; the connection is closed after the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.typedefs import Handler

from gateway.body import BodyIncomplete, BodyTimeout, BodyTooLarge, CorruptBody, read_body
from gateway.coding import UnsupportedCoding, body_coding, check_transfer_coding
from gateway.limits import InflightBudget, OverBudget, RateLimiter, retry_after
from gateway.metrics import GatewayMetrics
from gateway.publish_hold import PublishHold
from gateway.publisher import Publish, PublishFailed, new_callback_message, publish_message
from gateway.redaction import redact_path
from gateway.routes import CALLBACK_PATH, OPENAPI_PATH
from gateway.signatures import SignatureError, SignatureVerifier
from gateway.sources import SourcePolicy, rate_key
from runtime import tracing
from runtime.amqp import BrokerSession
from runtime.probes import add_probes
from runtime.settings import Settings
from schemas import topology
from schemas.message import CONTENT_TYPES

log = logging.getLogger("gateway")

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", BrokerSession)
SOURCES = web.AppKey("sources", SourcePolicy)
BUDGET = web.AppKey("inflight_budget", InflightBudget)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)  # absent: no rate limit
SIGNATURES = web.AppKey("signatures", SignatureVerifier)  # absent: signatures not required
METRICS = web.AppKey("metrics", GatewayMetrics)
HOLD = web.AppKey("publish_hold", PublishHold)
# Set on a request once its callback is confirmed, for the access log line.
MESSAGE_ID = web.RequestKey("message_id", str)
CONTENT_TYPE = web.RequestKey("content_type", str)

__all__ = ["CALLBACK_PATH", "create_app", "token_is_valid"]

# Media types Flowscribe sends; the worker picks its decoder from the same value.
ACCEPTED_TYPES = frozenset(CONTENT_TYPES)
# A charset name as IANA registers them; anything else is not a charset we can decode.
_CHARSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}")

OPENAPI_FILE = Path(__file__).with_name("openapi.yaml")

# How aiohttp's server treats request bodies, for every server this app runs in
# (production and tests alike): it must not inflate a compressed body in its
# parser, before the handler has authenticated the request (the handler decodes
# within bounds: gateway.coding); and it must not read on through the body of a
# request answered without it ("lingering close"): that connection is closed.
BODY_HANDLING = {"auto_decompress": False, "lingering_time": 0}
# Of a body still arriving when its request is answered, at most this much is
# read (as sent, never inflated) before the connection is closed: enough for a
# client that sent a callback-sized body to get the answer rather than a reset,
# far too little for a bomb or a flood to cost anything.
DISCARD_BYTES = 512 * 1024
DISCARD_SECONDS = 1.0

def create_app(settings: Settings, *, publish: Publish = publish_message) -> web.Application:
    """The gateway's application; ``publish`` puts an accepted callback on the broker, once (the
    bench passes one that publishes nothing, to measure the HTTP side alone)."""
    metrics = GatewayMetrics()
    # client_max_size is a backstop for any future request.read(); the
    # callback handler counts bytes itself as they arrive (gateway.body).
    # Metrics outermost, so that every answer is counted: 403/429 from the guard, 500 from a bug.
    middlewares = [_answer_then_close, metrics.count_responses(CALLBACK_PATH), _json_errors, _source_guard]
    if (active_tracing := tracing.active()) is not None:  # off: not even imported
        from gateway.tracing import traced_callbacks

        middlewares.insert(2, traced_callbacks(active_tracing, MESSAGE_ID, CONTENT_TYPE))
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=middlewares, handler_args=BODY_HANDLING,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[HOLD] = hold = PublishHold(
        publish, hold_seconds=settings.publish_hold_seconds, attempt_timeout=settings.publish_timeout, metrics=metrics,
    )
    app[SOURCES] = SourcePolicy(settings.allowed_networks, settings.trusted_proxies)
    app[BUDGET] = InflightBudget(settings.max_inflight_bytes)
    if settings.rate_limit > 0:
        app[RATE_LIMITER] = RateLimiter(settings.rate_limit, settings.rate_burst)
    if settings.signing_secrets:
        app[SIGNATURES] = SignatureVerifier(settings.signing_secrets, settings.signature_tolerance)
    app.cleanup_ctx.append(_broker_session)

    async def stop_holding(app: web.Application) -> None:
        # Called as the server stops listening, before it waits for the requests in hand.
        hold.stop_within(settings.shutdown_timeout)

    app.on_shutdown.append(stop_holding)
    # The handler says `100 Continue` itself, once the checks that need no body have passed.
    app.router.add_post(CALLBACK_PATH + "/{token}", receive_callback, expect_handler=_continue_later)
    # No token at all gets the same answer as a wrong one.
    app.router.add_post(CALLBACK_PATH, _unauthorized, expect_handler=_continue_later)
    app.router.add_post(CALLBACK_PATH + "/", _unauthorized, expect_handler=_continue_later)

    async def not_ready() -> str | None:
        # Ready means: a callback sent here now is likely to get its 202. So not while stopping;
        # not before the broker was ever reached; not once it has been out of reach for longer
        # than the hold (what arrives now would expire into a 503: a load balancer had better
        # send it to a gateway that has a broker). Within the hold, ready: the outage is most
        # likely the cluster's, which every gateway sees alike, and holding is the answer to it.
        broker = app.get(BROKER)
        if hold.stopping:
            return "stopping"
        if broker is None or broker.connects == 0 or broker.down_for() > hold.hold_seconds:
            return "broker not connected"
        return None

    add_probes(app, metrics.registry, not_ready, retry_after=settings.retry_after)
    openapi = OPENAPI_FILE.read_bytes()  # read once: it is part of the code

    async def openapi_document(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/yaml")

    app.router.add_get(OPENAPI_PATH, openapi_document)
    # Last: every other path and method, so that aiohttp's own 404/405 does not
    # come after a `100 Continue` it sends first.
    app.router.add_route("*", "/{unserved:.*}", _not_served, expect_handler=_continue_later)
    return app


async def _broker_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # A short backoff: publishes are held waiting for this session, and the gateway should
    # take callbacks again within a second of the broker's return.
    async with BrokerSession(settings.amqp_url, "gateway", declare=topology.declare, max_backoff=0.5) as broker:
        app[BROKER] = broker
        # Serve as soon as the broker is there, but do not wait for it forever: until it
        # is, callbacks are held (gateway.publish_hold) and /readyz says not ready.
        with contextlib.suppress(TimeoutError):
            await broker.wait_ready(settings.publish_timeout)
        yield


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


@web.middleware
async def _answer_then_close(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A response given before the body was read is sent at once; then a little of the
    rest of the body is read and dropped: if that was all of it, the connection stays
    open, else aiohttp closes it (BODY_HANDLING). (No `Connection: close` in the answer:
    clients still sending take it as a reason to abort, and miss the answer.)"""
    response = await handler(request)
    if request.content.is_eof() or response.prepared:
        return response
    await response.prepare(request)
    await response.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError, web.RequestPayloadError):
        async with asyncio.timeout(DISCARD_SECONDS):
            left = DISCARD_BYTES
            while left > 0 and (chunk := await request.content.readany()):
                left -= len(chunk)
    return response


async def _not_served(request: web.Request) -> web.StreamResponse:
    """404, or 405 with the methods the path does take: what aiohttp would answer."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def _continue_later(request: web.Request) -> None:
    """Routes' Expect handler: refuse an expectation we cannot meet (417) and send
    nothing yet for `100-continue` (``_invite_body`` does, when the time comes)."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect}")


async def _invite_body(request: web.Request) -> None:
    """Everything that needs no body has passed: now tell a client waiting to send it."""
    if request.version == HttpVersion11 and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


def _unavailable(settings: Settings, reason: str) -> web.Response:
    return _error(503, reason, **{"Retry-After": str(settings.retry_after)})


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A bug answers a JSON 500 and is logged once, with the token redacted from the path."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": redact_path(request.path)})
        return _error(500, "internal error")


def _is_callback(path: str) -> bool:
    return path == CALLBACK_PATH or path.startswith(CALLBACK_PATH + "/")


@web.middleware
async def _source_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Callback paths only: the source must be in the allow-list and within its rate."""
    if not _is_callback(request.path):
        return await handler(request)
    app = request.app
    source = app[SOURCES].source(request.remote, request.headers.getall("X-Forwarded-For", ()))
    if not app[SOURCES].admits(source):
        return _error(403, "source address not allowed")
    limiter = app.get(RATE_LIMITER)
    if limiter is not None:
        wait = limiter.acquire(rate_key(source))
        if wait > 0:
            return _error(429, "too many requests from this source", **{"Retry-After": retry_after(wait)})
    return await handler(request)


def token_is_valid(presented: str, accepted: tuple[str, ...]) -> bool:
    """Constant-time against every accepted token (no early exit on a match)."""
    # surrogatepass: a path may decode to lone surrogates; they must compare, not raise.
    presented_bytes = presented.encode("utf-8", "surrogatepass")
    valid = False
    for token in accepted:
        valid |= hmac.compare_digest(presented_bytes, token.encode())
    return valid


async def _unauthorized(request: web.Request) -> web.Response:
    return _error(401, "unknown or missing callback token")


async def receive_callback(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    if not token_is_valid(request.match_info["token"], settings.callback_tokens):
        return await _unauthorized(request)
    verifier = app.get(SIGNATURES)
    signed = None
    if verifier is not None:
        try:
            signed = verifier.check_headers(request.headers, time.time())
        except SignatureError as e:
            return _error(401, f"signature refused: {e}")
    tracing.event("authenticated")

    if request.content_type not in ACCEPTED_TYPES:
        return _error(
            415,
            f"unsupported content type {request.content_type!r};"
            f" send one of {', '.join(sorted(ACCEPTED_TYPES))}",
        )
    if request.charset is not None and not _CHARSET.fullmatch(request.charset):
        return _error(415, "unsupported charset parameter")
    try:
        check_transfer_coding(request.headers.getall(hdrs.TRANSFER_ENCODING, ()))
        coding = body_coding(request.headers.getall(hdrs.CONTENT_ENCODING, ()))
    except UnsupportedCoding as e:
        return _error(415, str(e))
    too_large = f"body larger than {settings.max_body_bytes} bytes"
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return _error(413, too_large)
    budget = app[BUDGET]
    if request.content_length is not None and request.content_length > budget.available:
        log.warning("callback not accepted: in-flight byte budget exhausted",
                    extra={"bytes": request.content_length, "in_flight": budget.used})
        return _unavailable(settings, "the gateway is busy; retry later")

    await _invite_body(request)
    with budget.hold() as holding:
        try:
            body = await read_body(
                request, limit=settings.max_body_bytes, holding=holding, timeout=settings.body_read_timeout,
                coding=coding,
            )
        except BodyTooLarge:
            return _error(413, too_large)
        except BodyTimeout as e:
            return _error(408, str(e))
        except (BodyIncomplete, CorruptBody) as e:
            return _error(400, str(e))
        except OverBudget:
            log.warning("callback not accepted: in-flight byte budget exhausted",
                        extra={"bytes": holding.bytes, "in_flight": budget.used})
            return _unavailable(settings, "the gateway is busy; retry later")
        if not body:
            return _error(400, "empty body")
        tracing.event("body read")
        if signed is not None and verifier is not None:
            try:
                verifier.verify(signed, body)
            except SignatureError as e:
                return _error(401, f"signature refused: {e}")
            tracing.event("signature verified")

        content_type = request.content_type
        if request.charset:
            content_type = f"{content_type}; charset={request.charset}"
        message = new_callback_message(body, content_type)
        try:
            # Held (the body still counted in the budget) while the broker does not confirm;
            # gateway.publish_hold logs that, once per episode rather than once per callback.
            with app[METRICS].publishing():
                await app[HOLD].publish(app[BROKER], message)
        except PublishFailed:
            return _unavailable(settings, "the callback could not be stored; retry later")
        assert message.message_id is not None
        message_id = message.message_id
    # Logged once, by the access log ("callback accepted", with timing): one line per callback.
    request[MESSAGE_ID] = message_id
    request[CONTENT_TYPE] = content_type
    return web.json_response({"id": message_id}, status=202)
