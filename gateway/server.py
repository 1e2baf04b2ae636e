"""Run the gateway until SIGTERM/SIGINT, then drain in-flight requests and close."""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from flowscribe_ingest.lifecycle import stop_on_signals
from flowscribe_ingest.settings import Settings
from gateway.app import CALLBACK_PATH, create_app

log = logging.getLogger("gateway")

# The token is part of the URL: whatever follows the callback prefix is never logged.
_TOKEN_IN_PATH = re.compile(re.escape(CALLBACK_PATH) + r"/[^?#]*")


def redact_path(path: str) -> str:
    return _TOKEN_IN_PATH.sub(CALLBACK_PATH + "/<redacted>", path)


class AccessLog(AbstractAccessLogger):
    """One structured line per request, with the token redacted from the path."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in ("/healthz", "/readyz") else logging.INFO
        self.logger.log(
            level,
            "request",
            extra={
                "method": request.method,
                "path": redact_path(request.path),
                "status": response.status,
                "ms": round(time * 1000, 2),
                "remote": request.remote,
                "bytes_in": request.content_length,
            },
        )


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (by default: until SIGTERM/SIGINT)."""
    if not settings.callback_tokens:
        raise SystemExit("FLOWSCRIBE_CALLBACK_TOKENS is empty: set at least one callback token")
    stop = stop or asyncio.Event()
    runner = web.AppRunner(
        create_app(settings),
        access_log_class=AccessLog,
        access_log=logging.getLogger("gateway.access"),
        shutdown_timeout=settings.shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        log.info("gateway listening", extra={"host": host, "port": port})
        with stop_on_signals(stop):
            await stop.wait()
        log.info("gateway stopping: finishing in-flight requests")
    finally:
        await runner.cleanup()
    log.info("gateway stopped")
