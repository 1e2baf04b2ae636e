"""Console sessions kept in PostgreSQL: they survive a restart, two replicas honour each other's logins and
logouts, a new secret or a removed login ends them, and the table holds no usable cookie or token.

Two consoles on 127.0.0.1 (different ports) share the client's cookie jar, as two replicas behind one address
do: a cookie is scoped to the host, not the port.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from aiohttp.test_utils import TestServer

from console.app import create_app
from runtime.settings import Secrets, Settings
from tests.console_support import CREDENTIALS, OPERATOR_TOKEN, VIEWER_TOKEN, Client, console_settings

SECRET = "s" * 40


@contextlib.asynccontextmanager
async def running(settings: Settings, **overrides: Any) -> AsyncIterator[TestServer]:
    """One console process (its own app, sessions, pool), on the test run's database."""
    server = TestServer(create_app(console_settings(settings, **overrides)))
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def page(client: Client, server: TestServer, path: str = "/callbacks") -> tuple[int, str]:
    async with client.http.get(server.make_url(path), allow_redirects=False) as response:
        return response.status, await response.text()


def shared(secret: str = SECRET) -> dict[str, Any]:
    return {"console_session_secret": Secrets([secret])}


async def test_a_login_survives_a_restart(settings):
    async with running(settings, **shared()) as first:
        olga = Client(first)
        await olga.login(OPERATOR_TOKEN)
    async with running(settings, **shared()) as second:
        status, text = await page(olga, second)
        assert status == 200 and "olga" in text
        olga.server = second
        response, text = await olga.post("/dead-letters/purge", {"all": "1"}, allow_redirects=False)
        assert response.status == 303, text  # the CSRF token of the page read before the restart still holds
    await olga.close()


async def test_two_replicas_honour_each_others_logins_and_logouts(settings):
    async with running(settings, **shared()) as a, running(settings, **shared()) as b:
        olga, victor = Client(a), Client(b)
        await olga.login(OPERATOR_TOKEN)
        await victor.login(VIEWER_TOKEN)
        assert (await page(olga, b))[0] == 200
        assert (await page(victor, a))[0] == 200
        olga.server = b
        response, _ = await olga.post("/logout", {})
        assert response.url.path == "/login"
        status, _ = await page(olga, a)
        assert status == 303  # logged out on the other replica too
        assert (await page(victor, a))[0] == 200  # only hers
        await olga.close()
        await victor.close()


async def test_a_new_secret_logs_everyone_out(settings):
    async with running(settings, **shared()) as first:
        olga = Client(first)
        await olga.login(OPERATOR_TOKEN)
    async with running(settings, **shared("t" * 40)) as rotated:
        status, _ = await page(olga, rotated)
        assert status == 303
        olga.server = rotated
        await olga.login(OPERATOR_TOKEN)  # and logging in again works
    await olga.close()


async def test_a_login_removed_from_the_settings_or_given_a_new_token_ends_its_sessions(settings):
    async with running(settings, **shared()) as first:
        olga, victor = Client(first), Client(first)
        await olga.login(OPERATOR_TOKEN)
        await victor.login(VIEWER_TOKEN)
    olga_only = Secrets([c for c in CREDENTIALS if c.name == "olga"])
    async with running(settings, **shared(), console_tokens=olga_only) as second:
        assert (await page(olga, second))[0] == 200
        assert (await page(victor, second))[0] == 303
    new_token = Secrets([dataclasses.replace(c, token=c.token + "-new") for c in olga_only])
    async with running(settings, **shared(), console_tokens=new_token) as third:
        assert (await page(olga, third))[0] == 303
    await olga.close()
    await victor.close()


async def test_without_a_secret_a_login_is_the_processs_own(settings):
    async with running(settings) as a, running(settings) as b:
        olga = Client(a)
        await olga.login(OPERATOR_TOKEN)
        assert (await page(olga, a))[0] == 200
        assert (await page(olga, b))[0] == 303
        await olga.close()


async def test_the_table_holds_no_cookie_and_no_token(settings, db):
    async with running(settings, **shared()) as server:
        olga = Client(server)
        await olga.login(OPERATOR_TOKEN)
        (cookie,) = [c.value for c in olga.http.cookie_jar if c.key == "flowscribe_console"]
        rows = await db.fetch("SELECT key, data::text AS data FROM flowscribe.console_sessions")
        assert len(rows) == 1  # the login form's session was replaced, not kept beside it
        assert cookie.encode() not in bytes(rows[0]["key"]) and cookie not in rows[0]["data"]
        assert OPERATOR_TOKEN not in rows[0]["data"] and "olga" in rows[0]["data"]
        await olga.close()


async def test_pages_without_a_session_store_nothing(settings, db):
    async with running(settings, **shared()) as server:
        anonymous = Client(server)
        for path in ("/", "/callbacks", "/dead-letters", "/jobs", "/healthz", "/static/console.css"):
            response, _ = await anonymous.get(path, allow_redirects=False)
            assert "Set-Cookie" not in response.headers, path
        assert await db.fetchval("SELECT count(*) FROM flowscribe.console_sessions") == 0
        await anonymous.get("/login")  # the login form needs a session (its CSRF token)
        assert await db.fetchval("SELECT count(*) FROM flowscribe.console_sessions") == 1
        await anonymous.close()
