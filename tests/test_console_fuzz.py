"""Every parameter of every console route, fuzzed: bad input gets a 4xx (or is ignored), never a 5xx, and the
console goes on serving.

Hypothesis drives a plain blocking HTTP client in a thread while the console serves in the test's event loop,
logged in as an operator (so the forms reach their handlers with a valid CSRF token). ``ROUTES`` names each
route's query/form/path parameters; a test checks it covers every route the application has, so a new route
cannot go unfuzzed. The values mix arbitrary text, raw bytes that are not UTF-8, and the cases found by hand
(ages and timestamps past datetime's range, NUL, non-ASCII digits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import re
import urllib.parse
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.console_support import OPERATOR_TOKEN, Client, console  # noqa: F401
from tests.support import eventually

SELECTION = ("ids", "reason", "since", "until", "limit", "all")
LEDGER = ("message_id", "analysis_id", "job_id", "outcome", "content_type", "since", "until", "after")


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str  # {name}: a path parameter, fuzzed too
    params: tuple[str, ...] = ()  # query parameters of a GET, form fields of a POST


ROUTES = [
    Route("GET", "/", ("hours",)),
    Route("GET", "/login", ("next",)),
    Route("POST", "/login", ("token", "next")),
    Route("GET", "/callbacks", LEDGER),
    Route("GET", "/callbacks/{id}"),
    Route("GET", "/callbacks/{id}/body"),
    Route("POST", "/callbacks/{id}/reprocess"),
    Route("GET", "/dead-letters", SELECTION),
    Route("GET", "/dead-letters/export", SELECTION),
    Route("GET", "/dead-letters/{id}"),
    Route("GET", "/dead-letters/{id}/body"),
    Route("POST", "/dead-letters/replay", (*SELECTION, "force")),
    Route("POST", "/dead-letters/purge", SELECTION),
    Route("GET", "/previews/{token}"),
    Route("POST", "/previews/{token}/confirm"),
    Route("GET", "/jobs"),
    Route("GET", "/jobs/{id}"),
    Route("GET", "/audit", ("user", "event", "action", "since", "until", "before")),
    Route("GET", "/drift"),
    Route("GET", "/archive"),
    Route("POST", "/archive/prune", ("older_than", "ledger")),
    Route("GET", "/healthz"),
    Route("GET", "/readyz"),
    Route("GET", "/static/{filename}"),
    Route("POST", "/logout"),  # last: it ends the session the others use
]

# Found by hand or by this fuzz: each once answered 500.
EDGES = [
    "1000000d", "99999999999d", "99999999999999h", "9" * 5000 + "s", "0001-01-01T00:00+05:00",
    "9999-12-31T23:59:59-14:00", "\x00", "a\x00b", "\u00b2", "\u0663", "-1", "0", "9" * 40, "",
    "%", "%00", "1e9", "NaN", "12:00", "2026-02-30", "00000000-0000-0000-0000-000000000000",
    "{00000000-0000-0000-0000-000000000000}", "urn:uuid:00000000-0000-0000-0000-000000000000",
    "ingested", "application/json", "1", "on", "../../etc/passwd", "/\t/evil.example/",
]
VALUES = st.one_of(
    st.sampled_from(EDGES),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    st.binary(max_size=24),  # sent as raw percent-encoded bytes: often not UTF-8
)


def _encoded(value: str | bytes) -> str:
    return urllib.parse.quote_from_bytes(value if isinstance(value, bytes) else value.encode(), safe="")


def _form(fields: dict[str, str | bytes]) -> str:
    return "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in fields.items())


def _path(template: str, values: dict[str, str | bytes]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _encoded(values[m[1]]) or "x", template)


def fuzz(route: Route, port: int, cookie: str, csrf: str, examples: int) -> None:
    """Blocking: send ``examples`` requests to ``route`` with generated parameters; fail on any 5xx."""
    path_names = re.findall(r"\{(\w+)\}", route.path)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.fixed_dictionaries(dict.fromkeys(path_names, VALUES)),
           st.dictionaries(st.sampled_from(route.params or ("unknown",)), VALUES, max_size=len(route.params) or 1))
    def one(path_values: dict[str, str | bytes], params: dict[str, str | bytes]) -> None:
        path = _path(route.path, path_values)
        headers = {"Cookie": cookie}
        body = None
        if route.method == "GET":
            if params:
                path += "?" + _form(params)
        else:
            body = _form({"csrf": csrf, **params}).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request(route.method, path, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read()[:300]
        finally:
            connection.close()
        assert response.status < 500, (route.method, path, body, response.status, text)

    one()


@pytest.fixture
async def olga(console) -> AsyncIterator[Client]:  # noqa: F811
    c = Client(console)

    async def ready() -> bool:
        return (await c.get("/readyz"))[0].status == 200

    await eventually(ready, what="the console to be ready")
    await c.login(OPERATOR_TOKEN)
    yield c
    await c.close()


def test_every_route_is_fuzzed(console):  # noqa: F811
    served = set()
    for resource in console.app.router.resources():
        info = resource.get_info()
        path = info.get("formatter") or info.get("path") or info.get("prefix", "") + "/{filename}"
        for route in resource:
            if route.method != "HEAD":
                served.add((route.method, path))
    assert served == {(r.method, r.path) for r in ROUTES}


async def test_no_parameter_makes_any_route_fail(console, olga):  # noqa: F811
    """Every route in turn (one console: starting one per route would take most of the time)."""
    cookie = "; ".join(f"{c.key}={c.value}" for c in olga.http.cookie_jar)
    failures = []
    for route in ROUTES:
        # Routes that read the dead-letter queue open a broker connection per request: fewer examples.
        examples = 15 if route.path.startswith("/dead-letters") else 40
        try:
            await asyncio.to_thread(fuzz, route, console.port, cookie, olga.csrf, examples)
        except Exception as e:  # noqa: BLE001 - every route is tried; all failures are reported together
            failures.append(f"{route.method} {route.path}: {e}")
        response, _ = await olga.get("/healthz")
        assert response.status == 200, route  # still serving
    assert not failures, "\n\n".join(failures)
    response, _ = await olga.get("/callbacks", allow_redirects=False)
    assert response.status == 303  # the last route fuzzed was /logout: it did log out


REPORTED = [
    "/callbacks?since=1000000d", "/callbacks?since=99999999999d", "/callbacks?until=99999999999999h",
    "/callbacks?content_type=%00", "/callbacks?since=0001-01-01T00:00%2B05:00", "/dead-letters?since=1000000d",
    "/dead-letters?limit=%C2%B2", "/dead-letters/export?since=99999999999d",
]


async def test_the_reported_inputs_get_a_400_that_says_why(olga):
    for path in REPORTED:
        response, text = await olga.get(path)
        assert response.status == 400, (path, response.status)
        assert any(word in text for word in ("year 1", "out of range", "NUL", "whole number")), (path, text[-800:])
