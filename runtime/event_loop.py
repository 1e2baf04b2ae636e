"""The event loop a long-running process runs on: uvloop, or the standard library's.

uvloop (libuv under asyncio's API, the usual loop under aiohttp servers) does the
same work with less CPU per socket read, write and timer: 5-10% less CPU per
callback for the gateway and for the worker (bench/CPU.md).
``FLOWSCRIBE_EVENT_LOOP=asyncio`` keeps the standard library's loop: the code is
the same on both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["run"]


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """``asyncio.run(main)`` on the loop named by the ``event_loop`` setting."""
    if loop == "uvloop":
        import uvloop  # imported only by the processes that run on it

        return uvloop.run(main)
    return asyncio.run(main)
