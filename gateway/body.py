"""Read a callback body within its limits: size, time, and the process's byte budget.

The body has to be buffered whole (it is published as one message), so the
only way to bound memory is to count bytes as they arrive: aiohttp hands them
over in chunks and stops reading the socket while we do not consume, so a
slow or huge upload never costs more than what we agreed to hold. A body sent
compressed arrives as it was sent (the app turns off aiohttp's decompression)
and is decoded here, bounded by the same limit (gateway.coding).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.coding import ContentDecoder, CorruptBody, DecodedTooLarge
from gateway.limits import Holding

__all__ = ["BodyIncomplete", "BodyTimeout", "BodyTooLarge", "CorruptBody", "read_body"]


class BodyTooLarge(Exception):
    """More bytes than the body limit (announced or actually sent)."""


class BodyTimeout(Exception):
    """The client did not send the whole body in time."""


class BodyIncomplete(Exception):
    """The body ended badly: malformed chunked encoding, or the client went away."""


async def read_body(
    request: web.Request, *, limit: int, holding: Holding, timeout: float, coding: str | None = None
) -> bytes:
    """The whole body, decoded from ``coding`` if it has one; or BodyTooLarge (sent or decoded),
    BodyTimeout, BodyIncomplete, CorruptBody, OverBudget."""
    decoder = ContentDecoder(coding, limit=limit) if coding is not None else None
    chunks: list[bytes] = []
    sent = 0
    try:
        async with asyncio.timeout(timeout):
            # iter_any: whatever has arrived, so the count (and the budget)
            # follows the socket rather than a fixed chunk size. Both the bytes
            # sent and the bytes they decode to are held to the limit.
            async for chunk in request.content.iter_any():
                sent += len(chunk)
                if sent > limit:
                    raise BodyTooLarge(f"body larger than {limit} bytes")
                for piece in (chunk,) if decoder is None else decoder.decode(chunk):
                    holding.take(len(piece))
                    chunks.append(piece)
                    if decoder is not None:
                        await asyncio.sleep(0)  # a step of inflation at a time: others are served meanwhile
            if decoder is not None:
                decoder.finish()
    except TimeoutError:
        raise BodyTimeout(f"body not received within {timeout:g} s") from None
    except DecodedTooLarge:
        raise BodyTooLarge(f"body larger than {limit} bytes") from None
    except (web.RequestPayloadError, ConnectionError) as e:
        raise BodyIncomplete(f"body incomplete: {type(e).__name__}") from None
    # The join doubles the bytes for a moment; the chunks go right after.
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
