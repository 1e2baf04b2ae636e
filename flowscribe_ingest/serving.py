"""Run an aiohttp application on a TCP port for as long as a block runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def listening(
    runner: web.AppRunner, host: str, port: int, *, logger: logging.Logger, event: str
) -> AsyncIterator[int]:
    """Set up ``runner``, listen on ``host:port`` and log ``event`` with the bound
    address (port 0 picks a free one; tests and bench read it from the log).
    Yields the port; the runner is cleaned up on the way out, whatever happened."""
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info(event, extra={"host": bound_host, "port": bound_port})
        yield bound_port
    finally:
        await runner.cleanup()
