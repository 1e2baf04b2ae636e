"""A publish the broker does not confirm is held and published again: 202 if the broker is back
within the hold, 503 only once it expires; held bodies count against the byte budget; shutdown
answers every held request; one log line per episode; /readyz says what a load balancer needs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import BROKER, METRICS, create_app
from gateway.server import server_options
from tests.support import JSON_SAMPLE, TOKEN, TcpProxy, eventually

JSON = {"Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def gateway_behind(proxy: TcpProxy, settings, **changes) -> AsyncIterator[TestServer]:
    """A gateway whose broker link goes through ``proxy`` (which the test cuts and restores)."""
    running = dataclasses.replace(settings, amqp_url=proxy.url(settings.amqp_url), **changes)
    server = TestServer(create_app(running))
    await server.start_server(**server_options(running))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def link() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.open()
    try:
        yield proxy
    finally:
        await proxy.close()


def callback_url(server: TestServer) -> str:
    return str(server.make_url(f"/flowscribe/callback/{TOKEN}"))


async def post(http: aiohttp.ClientSession, server: TestServer, body: bytes = JSON_SAMPLE) -> tuple[int, float]:
    """Status of one callback post, and when it was answered (monotonic)."""
    async with http.post(callback_url(server), data=body, headers=JSON) as r:
        await r.read()
        return r.status, time.monotonic()


def hold_sample(server: TestServer, name: str, **labels: str) -> float:
    return server.app[METRICS].registry.get_sample_value(name, labels) or 0.0


async def connected(server: TestServer) -> None:
    async def ready() -> bool:
        return server.app[BROKER].ready
    await eventually(ready, what="the gateway to connect")


class TestRideThrough:
    async def test_broker_back_within_the_hold_means_202_for_every_callback(self, settings, http, link, caplog):
        """The link cut mid-run, for less than the hold: every callback answered 202, after the
        link is back; one log line when the hold began and one when it ended, for all of them."""
        caplog.set_level(logging.INFO, logger="gateway")
        async with gateway_behind(link, settings, publish_hold_seconds=20.0) as server:
            await connected(server)
            await link.close()  # the broker "restarts": connection reset, new ones refused
            posts = [asyncio.create_task(post(http, server)) for _ in range(20)]

            async def all_held() -> bool:
                return hold_sample(server, "flowscribe_publishes_held") == 20
            await eventually(all_held, what="the 20 callbacks to be held")
            await link.open()
            back = time.monotonic()
            answers = await asyncio.gather(*posts)
        assert [status for status, _ in answers] == [202] * 20
        assert min(at for _, at in answers) >= back
        assert hold_sample(server, "flowscribe_publish_hold_seconds_count", result="confirmed") == 20
        assert hold_sample(server, "flowscribe_publish_hold_seconds_count", result="expired") == 0
        assert hold_sample(server, "flowscribe_publishes_held") == 0
        lines = [r for r in caplog.records if r.getMessage().startswith("publishes held")]
        assert [r.getMessage() for r in lines] == [
            "publishes held: the broker did not confirm; publishing again until it does",
            "publishes held: episode over",
        ]
        assert (lines[1].held, lines[1].confirmed, lines[1].expired) == (20, 20, 0)

    async def test_broker_away_longer_than_the_hold_is_503_then_202_within_a_second(self, settings, http, link):
        async with gateway_behind(link, settings, publish_hold_seconds=1.0) as server:
            await connected(server)
            await link.close()
            began = time.monotonic()
            async with http.post(callback_url(server), data=JSON_SAMPLE, headers=JSON) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "5"
                assert await r.json() == {"error": "the callback could not be stored; retry later"}
            assert time.monotonic() - began >= 1.0, "answered before the hold expired"
            assert hold_sample(server, "flowscribe_publish_hold_seconds_count", result="expired") == 1
            await asyncio.sleep(1.0)  # the broker stays away a while longer: the session backs off
            await link.open()
            back = time.monotonic()

            async def accepted() -> float | None:
                status, at = await post(http, server)
                return at if status == 202 else None
            first_202 = await eventually(accepted, what="a 202 once the broker is back")
        assert first_202 - back < 1.0, f"first 202 {first_202 - back:.2f}s after the broker's return"

    async def test_held_bodies_count_against_the_byte_budget(self, settings, http, link):
        """Two bodies held fill the budget: the third callback gets its 503 at once, not after a hold."""
        budget = 2 * len(JSON_SAMPLE) + 100
        async with gateway_behind(link, settings, publish_hold_seconds=30.0, max_inflight_bytes=budget) as server:
            await connected(server)
            await link.close()
            held = [asyncio.create_task(post(http, server)) for _ in range(2)]

            async def both_held() -> bool:
                return hold_sample(server, "flowscribe_publishes_held") == 2
            await eventually(both_held, what="two callbacks to be held")
            began = time.monotonic()
            status, at = await post(http, server)
            assert status == 503 and at - began < 1.0
            await link.open()
            assert [s for s, _ in await asyncio.gather(*held)] == [202, 202]

    async def test_shutdown_answers_every_held_callback_within_its_timeout(self, settings, http, link):
        """SIGTERM while holding: each held request gets its 503 before the shutdown timeout, none is cut off."""
        shutdown_timeout = 3.0
        async with gateway_behind(link, settings, publish_hold_seconds=60.0,
                                  shutdown_timeout=shutdown_timeout) as server:
            await connected(server)
            await link.close()
            held = [asyncio.create_task(post(http, server)) for _ in range(5)]

            async def all_held() -> bool:
                return hold_sample(server, "flowscribe_publishes_held") == 5
            await eventually(all_held, what="five callbacks to be held")
            began = time.monotonic()
            await server.close()  # what the gateway does on SIGTERM: stop listening, drain, clean up
            took = time.monotonic() - began
            answers = await asyncio.gather(*held, return_exceptions=True)
        assert [a[0] if isinstance(a, tuple) else repr(a) for a in answers] == [503] * 5
        assert took < shutdown_timeout


class TestReadiness:
    async def test_ready_while_within_the_hold_not_after_it(self, settings, http, link):
        """Not ready before the broker was ever reached; ready while a lost broker may still come back
        within the hold (holding is the answer to that); not ready once it has been away longer."""
        await link.close()
        async with gateway_behind(link, settings, publish_hold_seconds=1.5) as server:
            async with http.get(server.make_url("/readyz")) as r:
                assert (r.status, (await r.json())["error"]) == (503, "broker not connected")
            await link.open()
            await connected(server)
            await link.close()

            async def not_connected() -> bool:
                return not server.app[BROKER].ready
            await eventually(not_connected, what="the gateway to notice the broker is gone")
            async with http.get(server.make_url("/readyz")) as r:
                assert r.status == 200, "within the hold the gateway still takes callbacks"

            async def unready() -> bool:
                async with http.get(server.make_url("/readyz")) as r:
                    return r.status == 503
            began = time.monotonic()
            await eventually(unready, what="readiness to drop once the hold is over")
            assert time.monotonic() - began >= 1.0
