"""Read a callback body within its limits: size, time, and the process's byte budget.

The body has to be buffered whole (it is published as one message), so the
only way to bound memory is to count bytes as they arrive: aiohttp hands them
over in chunks and stops reading the socket while we do not consume, so a
slow or huge upload never costs more than what we agreed to hold.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.limits import Holding


class BodyTooLarge(Exception):
    """More bytes than the body limit (announced or actually sent)."""


class BodyTimeout(Exception):
    """The client did not send the whole body in time."""


class BodyIncomplete(Exception):
    """The body ended badly: malformed chunked encoding, or the client went away."""


async def read_body(request: web.Request, *, limit: int, holding: Holding, timeout: float) -> bytes:
    """The whole body, or BodyTooLarge / BodyTimeout / BodyIncomplete / OverBudget."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            # iter_any: whatever has arrived, so the count (and the budget)
            # follows the socket rather than a fixed chunk size.
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body larger than {limit} bytes")
                holding.take(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"body not received within {timeout:g} s") from None
    except (web.RequestPayloadError, ConnectionError) as e:
        raise BodyIncomplete(f"body incomplete: {type(e).__name__}") from None
    # The join doubles the bytes for a moment; the chunks go right after.
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
