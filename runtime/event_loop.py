"""The event loop the worker runs on: uvloop, or the standard library's.

uvloop (libuv under asyncio's API) does the same work with less CPU per socket
read, write and timer (bench/CPU.md). ``FLOWSCRIBE_EVENT_LOOP=asyncio`` keeps the
standard library's loop: the code is the same on both.

Not the gateway: it saved the gateway 5-13% CPU per callback too, but with 200
clients uploading 2 MiB at once against a 32 MiB in-flight budget its RSS grew by
188 MiB instead of 113 (tests/test_security.py bounds it at 4x the budget, 128 MiB):
uvloop reads more of the uploads it then refuses before the connection closes.
The in-flight budget is a promise about memory, so the gateway keeps asyncio.run.
The console (not on the callbacks' path) keeps it too.
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
