"""Run the console until SIGTERM/SIGINT: finish requests and running actions (bounded), then close."""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web

from console.app import create_app
from runtime.lifecycle import stop_on_signals
from runtime.serving import listening
from runtime.settings import Settings

log = logging.getLogger("console")


async def serve(settings: Settings, sock: socket.socket, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    runner = web.AppRunner(create_app(settings), shutdown_timeout=settings.shutdown_timeout,
                           handle_signals=False, access_log=None)
    async with listening(runner, sock, logger=log, event="console listening"):
        with stop_on_signals(stop):
            await stop.wait()
        log.info("console stopping: finishing requests and running actions")
    log.info("console stopped")
