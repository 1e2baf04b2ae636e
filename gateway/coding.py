"""Content codings of a callback body: which ones the gateway undoes, and undoing one within bounds.

aiohttp would inflate a compressed body inside its HTTP parser, as the bytes
arrive, before any handler has looked at the request, and keep inflating while
it discards the body of a request it refused: a few megabytes of gzip could
hold the event loop for seconds. The gateway turns that off (gateway.app) and
decodes here instead, only for an authenticated request, and never more than
the body limit: a body costs at most the limit's worth of inflation however
small its compressed form, in steps short enough for other requests to be
served in between.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

# What the gateway decodes, by every name HTTP gives it (RFC 9110 8.4.1.3: x-gzip is gzip).
DECODED = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
# Most bytes one inflate call may produce: the caller yields to the event loop
# between steps, so one body never holds it for longer than a step takes (~0.1 ms).
STEP = 64 * 1024


class UnsupportedCoding(Exception):
    """A content or transfer coding the gateway does not decode; the message says which."""


class DecodedTooLarge(Exception):
    """The decoded body is over the limit."""


class CorruptBody(Exception):
    """The body is not valid in the coding it claims."""


def _listed(values: Sequence[str]) -> list[str]:
    return [coding.strip() for value in values for coding in value.split(",")]


def body_coding(content_encoding: Sequence[str]) -> str | None:
    """The one coding to undo ("gzip", "deflate"), given every Content-Encoding header's value;
    None for none. UnsupportedCoding for anything the gateway would not decode, rather than
    passing on bytes the worker cannot read."""
    listed = _listed(content_encoding)
    applied = [coding.lower() for coding in listed if coding.lower() != "identity"]
    if len(applied) > 1 or (applied and applied[0] not in DECODED):
        raise UnsupportedCoding(
            f"content coding {', '.join(listed)!r} is not decoded: send the body as it is, or in one of "
            + ", ".join(sorted(DECODED)))
    return DECODED[applied[0]] if applied else None


def check_transfer_coding(transfer_encoding: Sequence[str]) -> None:
    """Only chunked (the HTTP parser's own) may frame a body; aiohttp would skip any other silently."""
    listed = _listed(transfer_encoding)
    if listed and [coding.lower() for coding in listed] != ["chunked"]:
        raise UnsupportedCoding(
            f"transfer coding {', '.join(listed)!r} is not decoded: send the body with Content-Length or chunked")


class ContentDecoder:
    """Undoes one coding, fed as the body arrives; its output never goes past ``limit``."""

    def __init__(self, coding: str, *, limit: int) -> None:
        self.coding = coding
        self._limit = limit
        self._produced = 0
        self._inflate: zlib._Decompress | None = None
        self._head = b""  # deflate: the first two bytes tell a zlib header from raw deflate

    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in pieces of at most STEP; DecodedTooLarge before a
        piece would take the output past the limit, CorruptBody when the data is not valid."""
        if self._inflate is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
        more = bool(data)
        while more:
            inflate = self._inflater(data)
            room = min(STEP, self._limit - self._produced + 1)
            try:
                piece = inflate.decompress(data, room)
            except zlib.error:
                raise CorruptBody(f"body is not valid {self.coding}") from None
            data = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
            # A full piece may leave output inside zlib with no input left: ask again.
            more = bool(data) or (len(piece) == room and not inflate.eof)
            if piece:
                self._produced += len(piece)
                if self._produced > self._limit:
                    raise DecodedTooLarge(f"decoded body larger than {self._limit} bytes")
                yield piece

    def finish(self) -> None:
        """The body has ended: CorruptBody if its coding had not."""
        if self._head or (self._inflate is not None and not self._inflate.eof):
            raise CorruptBody(f"{self.coding} body cut short")

    def _inflater(self, data: bytes) -> zlib._Decompress:
        if self._inflate is not None and not self._inflate.eof:
            return self._inflate
        if self._inflate is not None and self.coding != "gzip":
            raise CorruptBody("data after the end of the deflate stream")
        if self.coding == "gzip":  # another member may follow the first (RFC 1952 2.2)
            wbits = 16 + zlib.MAX_WBITS
        else:  # RFC 9110 says zlib format; some senders send raw deflate: accept both
            zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
        self._inflate = zlib.decompressobj(wbits)
        return self._inflate
