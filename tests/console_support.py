"""The console under test: its settings (two logins), a running server, and a client that logs in."""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from console.app import create_app
from runtime.settings import ConsoleCredential, Secrets, Settings

OPERATOR_TOKEN = "operate-" + secrets.token_urlsafe(24)
VIEWER_TOKEN = "view-" + secrets.token_urlsafe(24)
CREDENTIALS = Secrets([ConsoleCredential("olga", "operate", OPERATOR_TOKEN),
                       ConsoleCredential("victor", "view", VIEWER_TOKEN)])
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def console_settings(settings: Settings, **overrides: Any) -> Settings:
    return dataclasses.replace(settings, **{"console_tokens": CREDENTIALS, **overrides})


@pytest.fixture
async def console(settings: Settings) -> AsyncIterator[TestServer]:
    """The console app on a free port, on the test run's database and vhost."""
    server = TestServer(create_app(console_settings(settings)))
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token in the page"
    return match[1]


class Client:
    """A browser-like HTTP client: its own cookie jar, and the CSRF token of the page it last read."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        # unsafe: keep cookies for an IP address host (127.0.0.1), as a browser does.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def get(self, path: str, **kwargs: object) -> tuple[aiohttp.ClientResponse, str]:
        async with self.http.get(self.url(path), **kwargs) as response:  # type: ignore[arg-type]
            text = await response.text(errors="replace")
        if 'name="csrf"' in text:
            self.csrf = csrf_of(text)
        return response, text

    async def post(self, path: str, data: dict[str, str], *, csrf: bool = True,
                   **kwargs: object) -> tuple[aiohttp.ClientResponse, str]:
        form = {"csrf": self.csrf, **data} if csrf else data
        async with self.http.post(self.url(path), data=form, **kwargs) as response:  # type: ignore[arg-type]
            text = await response.text(errors="replace")
        if 'name="csrf"' in text:
            self.csrf = csrf_of(text)
        return response, text

    async def login(self, token: str) -> None:
        await self.get("/login")
        response, text = await self.post("/login", {"token": token, "next": "/callbacks"})
        assert response.status == 200 and response.url.path == "/callbacks", text[:500]

    async def close(self) -> None:
        await self.http.close()
