"""Request bodies on the wire: a refused one costs the gateway nothing, a compressed one is decoded
after authentication within bounds, and a coding the gateway does not decode is refused, never passed on."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable

import pytest

from gateway.coding import ContentDecoder, CorruptBody, DecodedTooLarge, UnsupportedCoding, body_coding
from tests import test_security
from tests.support import JSON_SAMPLE
from tests.test_gateway import get_one
from tests.test_security import RawHttp, head, nets, path

# Fixtures shared with the security tests: gateways served as in production, their byte budget.
make_gateway = test_security.make_gateway
app_budget = test_security.app_budget

# 64 KiB of gzip that inflates to 64 MiB of zeros.
BOMB = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
GZIP = "Content-Encoding: gzip\r\n"


@pytest.fixture
def decompressors(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every zlib decompressor made in this process (aiohttp's and ours) from now on."""
    made: list[int] = []
    real = zlib.decompressobj

    def counting(*args: object, **kwargs: object) -> object:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zlib, "decompressobj", counting)
    return made


async def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request``, read the answer: its status and bytes."""
    raw = await RawHttp.connect(port)
    try:
        await raw.send(request)
        return await raw.response()
    finally:
        raw.close()


class TestRefusedBeforeTheBody:
    """Whatever its body, a request refused on its head is answered and its connection closed:
    nothing inflated, nothing drained."""

    @pytest.mark.parametrize(("case", "expected"), [
        ("wrong token", 401), ("no token", 401), ("source not allowed", 403), ("wrong type", 415),
        ("announced too large", 413), ("unknown path", 404),
    ])
    async def test_a_gzip_bomb_is_never_inflated(self, make_gateway, decompressors, case, expected):
        target, content_type, changes = path("wrong-token"), "application/json", {}
        if case == "no token":
            target = "/flowscribe/callback"
        elif case == "source not allowed":
            target, changes = path(), {"allowed_networks": nets("192.0.2.0/24")}
        elif case == "wrong type":
            target, content_type = path(), "text/plain"
        elif case == "announced too large":
            target, changes = path(), {"max_body_bytes": 1024}
        elif case == "unknown path":
            target = "/elsewhere"
        server = await make_gateway(**changes)
        status, _ = await exchange(
            server.port, head(target, content_length=len(BOMB), content_type=content_type, extra=GZIP) + BOMB)
        assert status == expected
        assert decompressors == []

    async def test_the_body_is_not_drained_either(self, make_gateway):
        """64 MiB announced, sent as fast as the gateway takes it: it answers 401 and closes,
        rather than reading what it will not use."""
        server = await make_gateway()
        announced = 64 << 20
        raw = await RawHttp.connect(server.port)
        answer = asyncio.create_task(raw.response())
        sent = 0
        try:
            await raw.send(head(path("wrong-token"), content_length=announced))
            block = b"x" * (1 << 20)
            with pytest.raises(ConnectionError):
                while sent < announced:
                    await raw.send(block)
                    sent += len(block)
            assert (await answer)[0] == 401
        finally:
            answer.cancel()
            raw.close()
        assert sent < announced

    async def test_a_small_refused_body_keeps_the_connection(self, make_gateway):
        """A body that had fully arrived with its head costs nothing to skip: keep-alive holds."""
        server = await make_gateway()
        raw = await RawHttp.connect(server.port)
        try:
            for _ in range(2):
                await raw.send(head(path("wrong-token"), content_length=2) + b"{}")
                assert (await raw.response())[0] == 401
        finally:
            raw.close()


class TestExpectContinue:
    """`100 Continue` invites the body: it is sent only once every check that needs no body has passed."""

    @pytest.mark.parametrize(("case", "expected"), [
        ("wrong token", 401), ("no token", 401), ("source not allowed", 403), ("wrong type", 415),
        ("announced too large", 413), ("coding not decoded", 415), ("unknown path", 404), ("wrong method", 405),
    ])
    async def test_refused_without_continue(self, make_gateway, case, expected):
        target, content_type, extra, changes = path(), "application/json", "", {}
        if case == "wrong token":
            target = path("wrong-token")
        elif case == "no token":
            target = "/flowscribe/callback"
        elif case == "source not allowed":
            changes = {"allowed_networks": nets("192.0.2.0/24")}
        elif case == "wrong type":
            content_type = "text/plain"
        elif case == "announced too large":
            changes = {"max_body_bytes": 1024}
        elif case == "coding not decoded":
            extra = "Content-Encoding: br\r\n"
        elif case == "unknown path":
            target = "/elsewhere"
        server = await make_gateway(**changes)
        request = head(target, content_length=len(JSON_SAMPLE), content_type=content_type,
                       extra=extra + "Expect: 100-continue\r\n")
        if case == "wrong method":
            request = request.replace(b"POST ", b"PUT ", 1)
        status, data = await exchange(server.port, request)
        assert status == expected, data
        assert b"100 Continue" not in data

    async def test_continue_then_accepted(self, make_gateway, broker):
        server = await make_gateway()
        raw = await RawHttp.connect(server.port)
        try:
            await raw.send(head(path(), content_length=len(JSON_SAMPLE), extra="Expect: 100-continue\r\n"))
            assert (await raw.response())[0] == 100
            await raw.send(JSON_SAMPLE)
            assert (await raw.response())[0] == 202
        finally:
            raw.close()
        assert (await get_one(broker)).body == JSON_SAMPLE


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(p) for p in parts)


class TestContentCodings:
    """gzip (and its alias x-gzip) and deflate are decoded after authentication; anything else is 415."""

    @pytest.mark.parametrize(("coding", "encoded"), [
        ("gzip", gzip.compress(JSON_SAMPLE)),
        ("x-gzip", gzip.compress(JSON_SAMPLE)),
        ("GZip", gzip.compress(JSON_SAMPLE)),
        ("deflate", zlib.compress(JSON_SAMPLE)),
        ("identity", JSON_SAMPLE),
        ("gzip, identity", gzip.compress(JSON_SAMPLE)),
        ("gzip", gzip_members(JSON_SAMPLE[:100], JSON_SAMPLE[100:])),  # RFC 1952: members concatenated
    ])
    async def test_decoded_before_publishing(self, make_gateway, broker, coding, encoded):
        server = await make_gateway()
        status, data = await exchange(server.port, head(
            path(), content_length=len(encoded), extra=f"Content-Encoding: {coding}\r\n") + encoded)
        assert status == 202, data
        assert (await get_one(broker)).body == JSON_SAMPLE

    @pytest.mark.parametrize(("header", "reason"), [
        ("Content-Encoding: gzip, gzip", "content coding 'gzip, gzip'"),
        ("Content-Encoding: gzip\r\nContent-Encoding: gzip", "content coding 'gzip, gzip'"),
        ("Content-Encoding: br", "content coding 'br'"),
        ("Content-Encoding: compress", "content coding 'compress'"),
        ("Content-Encoding: zstd", "content coding 'zstd'"),
        ("Transfer-Encoding: gzip, chunked", "transfer coding 'gzip, chunked'"),
    ])
    async def test_not_decoded_is_415_with_the_reason(self, make_gateway, broker, decompressors, header, reason):
        server = await make_gateway()
        body = gzip.compress(gzip.compress(JSON_SAMPLE))
        if "Transfer-Encoding" in header:
            request = head(path(), extra=header + "\r\n") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            request = head(path(), content_length=len(body), extra=header + "\r\n") + body
        status, data = await exchange(server.port, request)
        assert status == 415, data
        assert reason in data.decode()
        assert await get_one(broker) is None
        assert decompressors == []

    async def test_corrupt_gzip_is_400(self, make_gateway, broker):
        server = await make_gateway()
        body = gzip.compress(JSON_SAMPLE)[:-12] + b"garbage....."
        status, data = await exchange(server.port, head(path(), content_length=len(body), extra=GZIP) + body)
        assert status == 400, data
        assert "gzip" in data.decode()
        assert await get_one(broker) is None

    async def test_bomb_with_a_good_token_stops_at_the_limit(self, make_gateway, app_budget, broker):
        server = await make_gateway(max_body_bytes=1 << 20)
        status, data = await exchange(server.port, head(path(), content_length=len(BOMB), extra=GZIP) + BOMB)
        assert status == 413, data
        assert app_budget(server).peak <= (1 << 20) + (256 << 10)
        assert await get_one(broker) is None


class TestDecoder:
    """The decoder alone: output bounded by the limit, never more than a step past it."""

    @pytest.mark.parametrize("header", ["", "identity", "gzip", "x-gzip", " GZIP ", "deflate", "gzip, identity"])
    def test_codings_decoded(self, header):
        assert body_coding([header] if header else []) in (None, "gzip", "deflate")

    @pytest.mark.parametrize("headers", [["gzip, gzip"], ["gzip", "gzip"], ["br"], ["gzip;q=1"], ["*"], [","]])
    def test_codings_refused(self, headers):
        with pytest.raises(UnsupportedCoding):
            body_coding(headers)

    @pytest.mark.parametrize("feed", [
        lambda data: [data], lambda data: [data[i:i + 100] for i in range(0, len(data), 100)]])
    def test_a_bomb_inflates_no_further_than_the_limit(self, feed: Callable[[bytes], list[bytes]]):
        decoder = ContentDecoder("gzip", limit=1 << 20)
        produced = 0
        with pytest.raises(DecodedTooLarge):
            for chunk in feed(BOMB):
                for piece in decoder.decode(chunk):
                    produced += len(piece)
                    assert produced <= (1 << 20)
        assert produced <= (1 << 20)

    def test_deflate_without_its_zlib_header_is_decoded_too(self):
        raw = zlib.compressobj(wbits=-15)
        encoded = raw.compress(JSON_SAMPLE) + raw.flush()
        decoder = ContentDecoder("deflate", limit=1 << 20)
        assert b"".join(decoder.decode(encoded)) == JSON_SAMPLE
        decoder.finish()

    def test_a_body_cut_short_is_corrupt(self):
        decoder = ContentDecoder("gzip", limit=1 << 20)
        assert JSON_SAMPLE.startswith(b"".join(decoder.decode(gzip.compress(JSON_SAMPLE)[:-20])))
        with pytest.raises(CorruptBody):
            decoder.finish()
