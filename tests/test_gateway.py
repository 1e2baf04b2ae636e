"""The gateway: who may post, what it accepts, and that 202 means "safely in the broker"."""

from __future__ import annotations

import datetime
import hashlib
import subprocess
import uuid

import aio_pika
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app, token_is_valid
from gateway.server import redact_path
from runtime.settings import Settings
from schemas import topology
from tests.support import JSON_SAMPLE, TOKEN, XML_SAMPLE, TcpProxy, eventually


def url(server: TestServer, token: str = TOKEN) -> str:
    return str(server.make_url(f"/flowscribe/callback/{token}"))


async def get_one(channel: aio_pika.abc.AbstractChannel, name: str = topology.CALLBACK_QUEUE):
    queue = await channel.get_queue(name)
    return await queue.get(fail=False, no_ack=True)


class TestAuthentication:
    """Only a configured token may post; every other request gets the same 401."""

    @pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], "%00"])
    async def test_wrong_token(self, gateway, http, broker, token):
        async with http.post(url(gateway, token), data=JSON_SAMPLE, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 401
            assert await r.json() == {"error": "unknown or missing callback token"}
        assert await get_one(broker) is None

    @pytest.mark.parametrize("path", ["/flowscribe/callback", "/flowscribe/callback/"])
    async def test_missing_token(self, gateway, http, path):
        async with http.post(str(gateway.make_url(path)), data=JSON_SAMPLE,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 401
            assert await r.json() == {"error": "unknown or missing callback token"}

    def test_any_of_several_tokens_is_accepted(self):
        assert token_is_valid("b", ("a", "b", "c"))
        assert not token_is_valid("d", ("a", "b", "c"))
        assert not token_is_valid("", ())

    def test_the_token_is_redacted_from_logged_paths(self):
        assert redact_path(f"/flowscribe/callback/{TOKEN}") == "/flowscribe/callback/<redacted>"
        assert TOKEN not in redact_path(f"/flowscribe/callback/{TOKEN}/extra")


class TestTransportLimits:
    """Content type, emptiness and size are checked before anything is published."""

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/octet-stream", "application/x-www-form-urlencoded"]
    )
    async def test_unsupported_type_is_415(self, gateway, http, broker, content_type):
        async with http.post(url(gateway), data=JSON_SAMPLE, headers={"Content-Type": content_type}) as r:
            assert r.status == 415
            assert "unsupported content type" in (await r.json())["error"]
        assert await get_one(broker) is None

    async def test_empty_body_is_400(self, gateway, http, broker):
        async with http.post(url(gateway), data=b"", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert await r.json() == {"error": "empty body"}
        assert await get_one(broker) is None

    async def test_body_over_the_limit_is_413(self, settings, http, broker):
        server = TestServer(create_app(_with(settings, max_body_bytes=1000)))
        await server.start_server()
        try:
            async with http.post(url(server), data=b"x" * 1001, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 413
                assert "larger than 1000 bytes" in (await r.json())["error"]

            async def chunked():  # no Content-Length: the limit holds while reading
                for _ in range(20):
                    yield b"y" * 100

            async with http.post(url(server), data=chunked(), headers={"Content-Type": "application/json"}) as r:
                assert r.status == 413
            async with http.post(url(server), data=b"z" * 1000, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 202  # exactly at the limit is fine
        finally:
            await server.close()

    async def test_bad_charset_is_415(self, gateway, http):
        async with http.post(url(gateway), data=JSON_SAMPLE,
                             headers={"Content-Type": 'application/json; charset="a b\\"c"'}) as r:
            assert r.status == 415


class TestPublishing:
    """202 only once the broker confirmed the exact bytes, as a persistent message."""

    @pytest.mark.parametrize(("body", "content_type"), [
        (JSON_SAMPLE, "application/json"), (XML_SAMPLE, "text/xml; charset=utf-8"),
    ])
    async def test_accepted_callback_is_in_the_queue_unchanged(self, gateway, http, broker, body, content_type):
        before = datetime.datetime.now(datetime.UTC)
        async with http.post(url(gateway), data=body, headers={"Content-Type": content_type}) as r:
            assert r.status == 202
            message_id = (await r.json())["id"]
        message = await get_one(broker)
        assert message is not None
        assert message.body == body
        assert message.message_id == message_id and uuid.UUID(message_id)
        assert message.content_type == content_type
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.timestamp is not None
        headers = message.headers
        assert headers[topology.HEADER_BODY_SHA256] == hashlib.sha256(body).hexdigest()
        received = datetime.datetime.fromisoformat(headers[topology.HEADER_RECEIVED_AT])
        assert before <= received <= datetime.datetime.now(datetime.UTC)

    async def test_broker_refusing_the_message_is_503(self, settings, http, broker, amqp_url):
        """Nacked for longer than the hold: 503 (the hold is tested in tests/test_publish_hold.py)."""
        # A length limit of 0 on the queue, with its reject-publish overflow: the broker nacks.
        vhost = amqp_url.rsplit("/", 1)[1]
        subprocess.run(["rabbitmqctl", "-q", "set_policy", "-p", vhost, "full", "^flowscribe\\.callbacks$",
                        '{"max-length": 0}', "--apply-to", "queues"], check=True, capture_output=True)
        gateway = TestServer(create_app(_with(settings, publish_hold_seconds=0.5)))
        await gateway.start_server()
        try:
            async def refused():
                async with http.post(url(gateway), data=JSON_SAMPLE, headers={"Content-Type": "application/json"}) as r:
                    return r.status == 503 and r.headers["Retry-After"] == "5"
            await eventually(refused, what="the broker's nack to become a 503")
        finally:
            await gateway.close()
            subprocess.run(["rabbitmqctl", "-q", "clear_policy", "-p", vhost, "full"], check=True, capture_output=True)
            # A quorum queue that went over its limit keeps refusing the publishers it knew
            # then (the tests' shared channel among them) until a message leaves it, even with
            # the limit gone: the next tests get a new queue.
            await broker.queue_delete(topology.CALLBACK_QUEUE)
            await topology.declare(broker)


class TestBrokerDown:
    """No broker for longer than the hold, no 2xx: a 503 with Retry-After, and 202 again once it is back."""

    async def test_503_while_down_then_202_when_back(self, settings, http, broker):
        proxy = TcpProxy("127.0.0.1", 5672)
        await proxy.open()
        await proxy.close()  # a port that refuses connections: the broker is "down"
        running = _with(settings, amqp_url=proxy.url(settings.amqp_url), publish_hold_seconds=0.5)
        server = TestServer(create_app(running))
        await server.start_server()
        try:
            async with http.post(url(server), data=JSON_SAMPLE, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "5"
                assert await r.json() == {"error": "the callback could not be stored; retry later"}
            async with http.get(server.make_url("/readyz")) as r:
                assert r.status == 503
            async with http.get(server.make_url("/healthz")) as r:
                assert r.status == 200  # alive, just not ready

            await proxy.open()  # the broker is back

            async def accepted():
                async with http.post(url(server), data=JSON_SAMPLE, headers={"Content-Type": "application/json"}) as r:
                    return r.status == 202
            await eventually(accepted, what="the gateway to reconnect")
            async with http.get(server.make_url("/readyz")) as r:
                assert r.status == 200
        finally:
            await server.close()
            await proxy.close()


def _with(settings: Settings, **changes) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


class TestHealth:
    """healthz says the process is alive; readyz that the broker is usable."""

    async def test_ready_when_connected(self, gateway, http):
        async def ready():
            async with http.get(gateway.make_url("/readyz")) as r:
                return r.status == 200
        await eventually(ready)
        async with http.get(gateway.make_url("/healthz")) as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
