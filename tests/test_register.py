"""`flowscribe-ingest register` against a fake Flowscribe, and `--check` against our real gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import secrets
import urllib.parse
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from flowscribe_ingest.cli import main as cli_main
from gateway.app import create_app
from ops.register import (
    INITIALIZE_PATH,
    RegistrationFailed,
    Retry,
    initialize_url,
    post_with_retries,
    register,
    vendor_sample,
)
from runtime.settings import Secrets, Settings
from schemas import topology
from tests.support import JSON_SAMPLE, TOKEN, TcpProxy

API_KEY = "fs-key-" + secrets.token_hex(8)
FAST = Retry(attempts=4, first_delay=0.001, max_delay=0.01)


class FakeFlowscribe:
    """Flowscribe's InitializeWebHook endpoint, answering from a script and recording each request."""

    def __init__(self, *answers: tuple[int, str, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.requests: list[web.Request] = []
        self.raw_queries: list[str] = []
        app = web.Application()
        app.router.add_post("/" + INITIALIZE_PATH, self._handle)
        self.server = TestServer(app)

    @property
    def base(self) -> str:
        return str(self.server.make_url("/"))

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        self.raw_queries.append(request.raw_path.partition("?")[2])
        status, body, headers = self.answers.pop(0) if self.answers else (200, "ok", {})
        return web.Response(status=status, text=body, headers=headers)


@pytest.fixture
async def flowscribe() -> AsyncIterator[type[FakeFlowscribe]]:
    """Start fake Flowscribes with a script of answers; all are closed at the end."""
    started: list[FakeFlowscribe] = []

    async def start(*answers: tuple[int, str, dict[str, str]]) -> FakeFlowscribe:
        fake = FakeFlowscribe(*answers)
        await fake.server.start_server()
        started.append(fake)
        return fake

    yield start  # type: ignore[misc]
    for fake in started:
        await fake.server.close()


async def run(fake: FakeFlowscribe, callback: str, **options: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = {"api_key": API_KEY, "retry": FAST, **options}
    status = await register(fake.base, callback, out=out, err=err, **options)  # type: ignore[arg-type]
    return status, out.getvalue(), err.getvalue()


CALLBACK = f"https://hooks.example.com/flowscribe/callback/{TOKEN}"


class TestInitializeWebHook:
    """The call Flowscribe documents, with our URL encoded once, retried only when it may help."""

    async def test_callback_url_is_one_encoded_query_parameter(self, flowscribe):
        fake = await flowscribe((200, '{"Success": true}', {}))
        tricky = f"https://hooks.example.com/flowscribe/callback/{TOKEN}?a=1&b=c d+e#f"
        status, out, err = await run(fake, tricky)
        assert status == 0, err
        (request,) = fake.requests
        assert request.method == "POST" and request.path == "/" + INITIALIZE_PATH
        assert fake.raw_queries == ["callbackURL=" + urllib.parse.quote(tricky, safe="")]
        assert request.query["callbackURL"] == tricky  # decodes back to exactly what we gave
        assert request.headers["X-API-Key"] == API_KEY
        assert '{"Success": true}' in out

    def test_encoding_of_reserved_characters(self):
        url = initialize_url("https://api.example.com/v2/", "https://h/cb/t?x=1&y=2")
        assert str(url) == ("https://api.example.com/v2/api/ConversationAnalysis/InitializeWebHook"
                            "?callbackURL=https%3A%2F%2Fh%2Fcb%2Ft%3Fx%3D1%26y%3D2")

    async def test_503_then_200_is_retried(self, flowscribe):
        fake = await flowscribe((503, "busy", {}), (200, "registered", {}))
        status, out, err = await run(fake, CALLBACK)
        assert status == 0
        assert len(fake.requests) == 2
        assert "attempt 1 of 4 failed (503" in err
        assert "Flowscribe answered 200 OK: registered" in out

    async def test_400_is_final(self, flowscribe):
        fake = await flowscribe((400, "callbackURL is not valid", {}))
        status, out, err = await run(fake, CALLBACK)
        assert status == 1
        assert len(fake.requests) == 1
        assert "400 Bad Request: callbackURL is not valid" in err
        assert out == ""

    async def test_429_waits_as_told_and_attempts_are_bounded(self, flowscribe):
        fake = await flowscribe(*[(429, "slow down", {"Retry-After": "7"})] * 5)
        pauses: list[float] = []

        async def sleep(seconds: float) -> None:
            pauses.append(seconds)

        async with aiohttp.ClientSession() as session:
            with pytest.raises(RegistrationFailed, match="gave up after 3 attempts; last: 429"):
                await post_with_retries(session, initialize_url(fake.base, CALLBACK), what="InitializeWebHook",
                                        retry=Retry(attempts=3, max_delay=5), sleep=sleep)
        assert len(fake.requests) == 3
        assert pauses == [5, 5]  # Retry-After, capped at max_delay

    async def test_connection_failures_back_off_and_give_up(self):
        gone = TcpProxy("127.0.0.1", 9)
        await gone.open()
        await gone.close()  # nothing listens there now
        pauses: list[float] = []

        async def sleep(seconds: float) -> None:
            pauses.append(seconds)

        async with aiohttp.ClientSession() as session:
            with pytest.raises(RegistrationFailed, match="gave up after 4 attempts; last: ClientConnectorError"):
                await post_with_retries(session, f"http://127.0.0.1:{gone.port}/x", what="InitializeWebHook",
                                        retry=Retry(attempts=4, first_delay=1, max_delay=3), sleep=sleep)
        assert pauses == [1, 2, 3]

    async def test_secrets_are_never_printed(self, flowscribe):
        echo = f"got key {API_KEY} for {CALLBACK} ({urllib.parse.quote(CALLBACK, safe='')})"
        fake = await flowscribe((500, echo, {}), (200, echo, {}))
        status, out, err = await run(fake, CALLBACK)
        assert status == 0
        assert API_KEY not in out + err and TOKEN not in out + err
        assert "<redacted>" in out


class TestCommandLine:
    """`flowscribe-ingest register`: key from FLOWSCRIBE_API_KEY; exit 0 ok, 1 failed, 2 usage."""

    @pytest.fixture(autouse=True)
    def api_key(self, monkeypatch):
        monkeypatch.setenv("FLOWSCRIBE_API_KEY", API_KEY)

    async def test_exit_status(self, flowscribe, capsys):
        ok = await flowscribe((503, "", {"Retry-After": "0"}), (200, "done", {}))
        argv = ["register", "--api-base", ok.base, "--callback-url", CALLBACK, "--api-key-header", "Api-Key"]
        assert await asyncio.to_thread(cli_main, argv) == 0
        assert [r.headers["Api-Key"] for r in ok.requests] == [API_KEY, API_KEY]

        refused = await flowscribe((401, "bad key", {}))
        argv = ["register", "--api-base", refused.base, "--callback-url", CALLBACK]
        assert await asyncio.to_thread(cli_main, argv) == 1

        assert await asyncio.to_thread(cli_main, ["register", "--api-base", ok.base,
                                                   "--callback-url", "ftp://example.com/x"]) == 2
        with pytest.raises(SystemExit) as usage:
            cli_main(["register", "--api-base", ok.base])
        assert usage.value.code == 2
        captured = capsys.readouterr()
        assert "Flowscribe answered 200 OK: done" in captured.out
        assert "401 Unauthorized: bad key" in captured.err
        assert API_KEY not in captured.out + captured.err and TOKEN not in captured.out + captured.err

    def test_the_key_is_a_hidden_setting(self):
        settings = Settings.from_env({"FLOWSCRIBE_API_KEY": API_KEY})
        assert tuple(settings.api_key) == (API_KEY,)
        assert API_KEY not in repr(settings.public()) and API_KEY not in repr(settings)


class TestCheck:
    """--check posts the vendor's sample through the public URL and registers only on 202."""

    def test_the_package_ships_the_vendor_sample(self):
        assert vendor_sample() == JSON_SAMPLE

    async def test_sample_reaches_the_queue_then_registers(self, gateway, broker, flowscribe):
        fake = await flowscribe((200, "registered", {}))
        url = str(gateway.make_url(f"/flowscribe/callback/{TOKEN}"))
        status, out, err = await run(fake, url, check=True)
        assert status == 0, err
        queue = await broker.get_queue(topology.CALLBACK_QUEUE)
        message = await queue.get(no_ack=True)
        assert message.body == vendor_sample()
        assert [r.query["callbackURL"] for r in fake.requests] == [url]
        assert "answered 202" in out and TOKEN not in out + err

    async def test_refused_check_registers_nothing(self, gateway, broker, flowscribe):
        fake = await flowscribe()
        url = str(gateway.make_url("/flowscribe/callback/not-our-token"))
        status, _, err = await run(fake, url, check=True)
        assert status == 1
        assert "check: 401" in err
        assert fake.requests == []

    async def test_signs_when_the_gateway_requires_signatures(self, settings, broker, flowscribe):
        key = secrets.token_bytes(32)
        server = TestServer(create_app(dataclasses.replace(settings, signing_secrets=Secrets([key]))))
        await server.start_server()
        try:
            fake = await flowscribe((200, "registered", {}))
            url = str(server.make_url(f"/flowscribe/callback/{TOKEN}"))
            assert (await run(fake, url, check=True))[0] == 1  # unsigned: 401
            status, _, err = await run(fake, url, check=True, signing_keys=(key,))
            assert status == 0, err
        finally:
            await server.close()
