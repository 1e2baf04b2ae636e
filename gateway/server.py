"""Run the gateway until SIGTERM/SIGINT, then drain in-flight requests and close."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.app import CONTENT_TYPE, MESSAGE_ID, create_app
from gateway.protocol_errors import ServerLog
from gateway.publisher import Publish, publish_message
from gateway.redaction import redact_path, redacted_logs
from gateway.routes import HEALTH_PATH, METRICS_PATH, READY_PATH
from runtime.lifecycle import stop_on_signals
from runtime.serving import listening
from runtime.settings import Settings, SettingsError

__all__ = ["AccessLog", "check_startable", "redact_path", "serve", "server_options", "warn_about_settings"]

log = logging.getLogger("gateway")

# secrets.token_urlsafe(16) is 22 characters: 128 bits, the least we advise.
MIN_TOKEN_LENGTH = 22


class AccessLog(AbstractAccessLogger):
    """One structured line per request, with the token redacted from the path."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in (HEALTH_PATH, READY_PATH, METRICS_PATH) else logging.INFO
        facts = {
            "method": request.method,
            "path": redact_path(request.path),
            "status": response.status,
            "ms": round(time * 1000, 2),
            "remote": request.remote,
            "bytes_in": request.content_length,
        }
        message_id = request.get(MESSAGE_ID)
        if message_id is None:
            self.logger.log(level, "request", extra=facts)
        else:
            # The one line per accepted callback (the handler does not log it again).
            facts.update(message_id=message_id, content_type=request.get(CONTENT_TYPE))
            self.logger.log(level, "callback accepted", extra=facts)


def server_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server arguments for ``AppRunner``/``TestServer``: logging and connection deadlines."""
    return {
        "access_log_class": AccessLog,
        "access_log": logging.getLogger("gateway.access"),
        # aiohttp's errors about requests it cannot parse: one warning each, none of the request's bytes.
        "logger": ServerLog(logging.getLogger("aiohttp.server")),
        # aiohttp arms its keep-alive timer when a connection opens and re-arms it
        # after each response, but not on partial input: a request head trickled
        # byte by byte (slow loris) is cut off when it expires, like an idle one.
        "keepalive_timeout": settings.header_read_timeout,
    }


def check_startable(settings: Settings) -> None:
    """Refuse to start without a token (a SettingsError, exit status 2); log what weakens the gateway."""
    if not settings.callback_tokens:
        raise SettingsError("FLOWSCRIBE_CALLBACK_TOKENS is empty: set at least one callback token")
    warn_about_settings(settings)


def warn_about_settings(settings: Settings) -> None:
    """Log settings that work but weaken the gateway (never a token itself: only its position)."""
    short = [i for i, token in enumerate(settings.callback_tokens, 1) if len(token) < MIN_TOKEN_LENGTH]
    if short:
        log.warning(
            "callback token shorter than advised; make one with `flowscribe-ingest token new`",
            extra={"token_positions": short, "min_length": MIN_TOKEN_LENGTH},
        )
    if settings.max_inflight_bytes < settings.max_body_bytes:
        log.warning(
            "FLOWSCRIBE_MAX_INFLIGHT_BYTES is below FLOWSCRIBE_MAX_BODY_BYTES: the largest bodies allowed"
            " can never be accepted (503)",
            extra={"max_inflight_bytes": settings.max_inflight_bytes, "max_body_bytes": settings.max_body_bytes},
        )


async def serve(
    settings: Settings, sock: socket.socket, stop: asyncio.Event | None = None, *, publish: Publish = publish_message
) -> None:
    """Serve on ``sock`` (``listening_socket(FLOWSCRIBE_GATEWAY_HOST, _PORT)``, or one
    of gateway.processes' sockets) until ``stop`` is set (by default: until
    SIGTERM/SIGINT). Call ``check_startable`` first (once per host, not once per process)."""
    stop = stop or asyncio.Event()
    with redacted_logs(settings.callback_tokens):
        runner = web.AppRunner(
            create_app(settings, publish=publish),
            shutdown_timeout=settings.shutdown_timeout,
            handle_signals=False,
            **server_options(settings),
        )
        async with listening(runner, sock, logger=log, event="gateway listening"):
            with stop_on_signals(stop):
                await stop.wait()
            log.info("gateway stopping: finishing in-flight requests")
        log.info("gateway stopped")
