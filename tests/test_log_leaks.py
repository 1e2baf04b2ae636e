"""What an attacker can make the gateway log: never a token or a piece of one, never body bytes,
and for a malformed request one warning line saying what was wrong, without a traceback."""

from __future__ import annotations

import gzip
import json
import secrets
import urllib.parse

import pytest

from gateway.redaction import Redactor
from tests.support import TOKEN
from tests.test_security import GatewayProcess, RawHttp, head, path

# Stands for a callback body: none of it may reach a log line.
BODY = ("BODY-" + secrets.token_hex(24)).encode()


def fragments(secret: str, size: int = 8) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def pct(text: str) -> str:
    """Every character percent-encoded, as an attacker may send a path."""
    return "".join(f"%{b:02X}" for b in text.encode())


def leak_shapes() -> dict[str, bytes]:
    token_path = path()
    shapes = {
        # LF-only line ends, every character of the path percent-encoded, a body, then a malformed header.
        "lf-only, percent-encoded path": (
            f"POST {pct(token_path)} HTTP/1.1\nHost: x\nContent-Length: {len(BODY)}\nBad\x01: x\n\n"
        ).encode() + BODY,
        "lf-only, percent-encoded segments": (
            f"POST /{pct(token_path[1:])} HTTP/1.1\nHost: x\nContent-Length: {len(BODY)}\nBad\x01: x\n\n"
        ).encode() + BODY,
        "lf-only, lower-case percent-encoding": (
            f"POST {pct(token_path).lower()} HTTP/1.1\nHost: x\nBad\x01: x\n\n").encode() + BODY,
        "percent-encoded prefix, bad version": f"POST /%66lowscribe/%63allback/{TOKEN} HTTP/9.9\r\n\r\n".encode(),
        "body then garbage": (
            head(path("wrong"), content_length=len(BODY)) + BODY + b"\x01GARBAGE " + BODY + b"\r\n\r\n"),
        "bad chunk size after body bytes": head(path(), chunked=True) + b"%x\r\n%s\r\nzz" % (len(BODY), BODY) + BODY,
        "binary": b"\x16\x03\x01\x00" + BODY + token_path.encode() + b"\r\n\r\n",
    }
    # aiohttp quotes only the first 100 bytes of an over-long line: the token cut anywhere in it.
    for offset in (40, 60, 70, 80, 90, 95):
        filler = "a" * offset
        shapes[f"long header, token at {offset}"] = (
            head(path("wrong"), content_length=0, extra=f"X-Note: {filler}{TOKEN}{'b' * 9000}\r\n"))
        shapes[f"long url, token at {offset}"] = (
            f"POST /{filler[:-5]}/{TOKEN}{'b' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        shapes[f"long encoded url, token at {offset}"] = (
            f"POST /{filler[:-5]}/{pct(TOKEN)}{'b' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return shapes


class TestRedactor:
    """The last line of defence, on finished text: the secret path segment and configured tokens,
    however encoded or cut."""

    @pytest.mark.parametrize("line", [
        f"b'POST {pct(path())} HTTP/1.1\\nHost: x'",
        f"b'POST {pct(path()).lower()} HTTP/1.1'",
        f"/flowscribe/callback/{pct(TOKEN)}",
        f"/%2566lowscribe/callback/{TOKEN}",
        f"Got more than 8190 bytes when reading: b'{'a' * 70}{TOKEN[:30]}...'",
        f"b'{'a' * 90}{pct(TOKEN)[:30]}...'",
        f"x{TOKEN[5:13]}y",
    ])
    def test_no_fragment_survives(self, line):
        redacted = Redactor([TOKEN])(line)
        decoded = urllib.parse.unquote(urllib.parse.unquote(redacted))
        assert not any(f in redacted or f in decoded for f in fragments(TOKEN)), redacted

    def test_other_text_is_untouched(self):
        line = '{"event": "request", "path": "/healthz", "status": 200, "remote": "127.0.0.1"}'
        assert Redactor([TOKEN])(line) == line


class TestNothingLeaks:
    """The real gateway process at DEBUG, sent each shape the outside test found: its whole output
    holds no token, no 8 characters of one, no body bytes; malformed requests are warnings without
    a traceback."""

    async def test_each_shape(self, settings):
        gateway = await GatewayProcess.start(settings, FLOWSCRIBE_LOG_LEVEL="debug")
        answers: dict[str, int | str] = {}
        try:
            port = await gateway.port()
            for name, raw in {**leak_shapes(), "corrupt gzip to a wrong token": head(
                    path("wrong"), content_length=len(BODY) + 20, extra="Content-Encoding: gzip\r\n")
                    + gzip.compress(BODY)[:10] + BODY + b"0123456789"}.items():
                client = await RawHttp.connect(port)
                try:
                    await client.send(raw)
                    answers[name] = (await client.response())[0]
                    await client.closed_by_server(timeout=1)  # the gateway done with it, or 1 s
                except ConnectionError:
                    answers[name] = "reset"
                finally:
                    client.close()
        finally:
            assert await gateway.stop() == 0
        assert all(status in (400, 401, 404, 413, 431, "reset") for status in answers.values()), answers
        token_bits, body_bits = fragments(TOKEN), fragments(BODY.decode())
        malformed = 0
        for line in gateway.lines:
            decoded = urllib.parse.unquote(urllib.parse.unquote(line))
            for text in (line, decoded):
                assert not [f for f in token_bits if f in text], line
                assert not [f for f in body_bits if f in text], line
            event = json.loads(line)
            assert "exception" not in event, line
            assert event["level"] in ("debug", "info", "warning"), line
            assert event["event"] != "Unhandled exception", line
            if event.get("reason"):
                malformed += 1
        assert malformed >= len(leak_shapes()) - 2, gateway.output  # each said what was wrong
