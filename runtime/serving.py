"""Run an aiohttp application on a TCP port for as long as a block runs.

The socket is bound first, by ``listening_socket``, and handed to the server:
one way to listen, whether a process serves alone or shares its port with
others (gateway.processes binds one socket per process before forking).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator

from aiohttp import web


def listening_socket(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (port 0: any free port).

    ``reuse_port`` (SO_REUSEPORT) lets several sockets, in several processes, bind
    the same port; the kernel then spreads incoming connections across them.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def listening(
    runner: web.AppRunner, sock: socket.socket, *, logger: logging.Logger, event: str
) -> AsyncIterator[int]:
    """Set up ``runner``, serve on ``sock`` (from ``listening_socket``) and log ``event``
    with the bound address (port 0 picks a free one; tests and bench read it from
    the log). Yields the port; the runner is cleaned up on the way out, whatever happened."""
    await runner.setup()
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        logger.info(event, extra={"host": bound_host, "port": bound_port})
        yield bound_port
    finally:
        await runner.cleanup()
        sock.close()  # already closed by the server once it started; not if it never did
