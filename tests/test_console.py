"""The operator's console over HTTP: who may do what, CSRF, headers that keep pages inert,
escaping of hostile payloads, the ledger's keyset pages, previews that bind their confirmation."""

from __future__ import annotations

import asyncio
import datetime
import html.parser
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator

import pytest

from console.app import create_app
from runtime.settings import Settings, SettingsError
from schemas import topology
from tests.console_support import (  # noqa: F401
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    Client,
    console,
    console_settings,
)
from tests.support import eventually, service_env
from tests.test_ops import dead_letter, depth, drain, store
from tests.test_pipeline import T0, versioned

SCRIPT = "<script>alert('xss')</script>"
ATTRIBUTE = '" onmouseover="alert(1)" x="'
IMG = "<img src=x onerror=alert(1)>"
XML_BODY = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<r a="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"><script>alert(2)</script>&xxe;</r>')


@pytest.fixture
async def client(console) -> AsyncIterator[Client]:  # noqa: F811
    c = Client(console)
    yield c
    await c.close()


async def operator(console) -> Client:  # noqa: F811
    c = Client(console)
    await c.login(OPERATOR_TOKEN)
    return c


class TestLogin:
    """Nothing is shown before login; tokens are compared, never logged; the cookie is strict."""

    async def test_pages_need_a_login(self, client):
        for path in ("/", "/callbacks", "/dead-letters", "/jobs", "/audit", "/drift", "/archive"):
            response, _ = await client.get(path, allow_redirects=False)
            assert response.status == 303 and response.headers["Location"].startswith("/login"), path
        for path, form in (("/dead-letters/replay", {"all": "1"}), ("/archive/prune", {"older_than": "1d"})):
            response, _ = await client.post(path, form)
            assert response.status == 403, path

    async def test_a_wrong_token_is_refused_and_neither_token_is_logged(self, client, caplog):
        caplog.set_level(logging.DEBUG)
        await client.get("/login")
        response, text = await client.post("/login", {"token": "not-" + OPERATOR_TOKEN, "next": "/"})
        assert response.status == 401 and "not a console login" in text
        await client.login(OPERATOR_TOKEN)
        logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
        assert "console login refused" in logged and "console login" in logged
        assert OPERATOR_TOKEN not in logged and "not-" + OPERATOR_TOKEN not in logged

    async def test_cookie_flags_and_a_fresh_session_at_login(self, client):
        response, _ = await client.get("/login")
        before = response.cookies["flowscribe_console"]
        assert before["httponly"] and before["samesite"] == "Lax" and not before["secure"]
        await client.login(VIEWER_TOKEN)
        after = [c for c in client.http.cookie_jar if c.key == "flowscribe_console"]
        assert len(after) == 1 and after[0].value != before.value  # no session fixation
        # Behind a TLS-terminating proxy the cookie is Secure.
        tls = Client(client.server)
        response, _ = await tls.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert response.cookies["flowscribe_console"]["secure"]
        await tls.close()

    async def test_open_redirects_are_not_followed(self, client):
        await client.get("/login")
        response, _ = await client.post("/login", {"token": OPERATOR_TOKEN, "next": "//evil.example/x"},
                                        allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/"

    async def test_logout(self, client):
        await client.login(OPERATOR_TOKEN)
        response, _ = await client.post("/logout", {})
        assert response.url.path == "/login"
        response, _ = await client.get("/callbacks", allow_redirects=False)
        assert response.status == 303


class TestCsrfAndRoles:
    """Actions are POSTs with the session's CSRF token, and only for the operate role."""

    async def test_a_post_without_or_with_a_foreign_token_is_refused(self, console, broker):  # noqa: F811
        await dead_letter(broker, b"{}")
        olga = await operator(console)
        other = await operator(console)
        for form, headers in [({}, {}), ({"csrf": other.csrf}, {}), ({"csrf": ""}, {}),
                              ({"csrf": olga.csrf}, {"Sec-Fetch-Site": "cross-site"})]:
            response, text = await olga.post("/dead-letters/purge", {"all": "1", **form}, csrf=False,
                                             headers=headers, allow_redirects=False)
            assert response.status == 403, (form, headers, text)
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1
        response, _ = await olga.post("/dead-letters/purge", {"all": "1"}, allow_redirects=False)
        assert response.status == 303  # the same request with the token: a preview
        await olga.close()
        await other.close()

    async def test_a_viewer_sees_but_cannot_act(self, client, broker, db):
        message_id = await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())))
        stored = await store(db, versioned(1, analysis_id=str(uuid.uuid4())), T0)
        await client.login(VIEWER_TOKEN)
        _, page = await client.get("/dead-letters")
        assert message_id in page and "Replay selection" not in page and "Purge selection" not in page
        _, page = await client.get(f"/callbacks/{stored}")
        assert "Reprocess" not in page
        for path, form in [("/dead-letters/replay", {"all": "1"}), ("/dead-letters/purge", {"all": "1"}),
                           (f"/callbacks/{stored}/reprocess", {})]:
            response, text = await client.post(path, form, allow_redirects=False)
            assert response.status == 403 and "may only view" in text, path
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1


class TestHeaders:
    """Every page forbids inline script and framing; downloads are never rendered."""

    async def test_strict_policy_on_every_response(self, client, db, broker):
        stored = await store(db, versioned(1, analysis_id=str(uuid.uuid4())), T0)
        await client.login(OPERATOR_TOKEN)
        for path in ("/login", "/", "/callbacks", f"/callbacks/{stored}", "/dead-letters", "/jobs", "/audit",
                     "/drift", "/archive",
                     "/static/console.css", "/no-such-page"):
            response, _ = await client.get(path)
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
        response, _ = await client.get(f"/callbacks/{stored}/body")
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert response.content_type == "application/octet-stream" and "sandbox" in response.headers[
            "Content-Security-Policy"]


class Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, str | None]]] = []
        self.declarations: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, dict(attrs)))

    def handle_decl(self, decl: str) -> None:
        if decl.lower() != "doctype html":
            self.declarations.append(decl)


class TestEscaping:
    """A callback is attacker-controlled: script, attribute and XML payloads render as text."""

    def assert_inert(self, html: str) -> None:
        """As a browser parses the page: our one script, no event handler, none of the payload's elements."""
        tags = Tags()
        tags.feed(html)
        assert [a for t, a in tags.seen if t == "script"] == [{"src": "/static/console.js", "defer": None}]
        assert not [(t, a) for t, a in tags.seen if any(name.startswith("on") for name in a)]
        assert not {t for t, _ in tags.seen} & {"img", "r", "iframe", "object"}
        assert not tags.declarations  # no DOCTYPE from the payload

    async def test_ledger_pages(self, client, db):
        body = versioned(1, analysis_id=str(uuid.uuid4()), text=SCRIPT + ATTRIBUTE + IMG)
        stored = await store(db, body, T0)
        await client.login(VIEWER_TOKEN)
        _, page = await client.get(f"/callbacks/{stored}")
        self.assert_inert(page)
        assert "&lt;script&gt;alert(" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
        _, page = await client.get("/callbacks?content_type=" + SCRIPT)  # a search value is echoed too
        self.assert_inert(page)

    async def test_dead_letter_pages(self, client, broker):
        xml_id = await dead_letter(broker, XML_BODY, content_type="application/xml",
                                   error=f"XmlError: {IMG}{ATTRIBUTE}", stage="decode")
        json_id = await dead_letter(broker, json.dumps({"x": SCRIPT + ATTRIBUTE}).encode(),
                                    error=f"PayloadDecodeError: {SCRIPT}")
        await client.login(OPERATOR_TOKEN)
        _, page = await client.get("/dead-letters")
        self.assert_inert(page)
        assert xml_id in page and json_id in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page
        _, page = await client.get(f"/dead-letters/{xml_id}")
        self.assert_inert(page)
        _, page = await client.get("/dead-letters?reason=" + ATTRIBUTE)
        self.assert_inert(page)
        response, _ = await client.post("/dead-letters/replay", {"all": "1"})
        assert response.url.path.startswith("/previews/")
        self.assert_inert((await client.get(response.url.path))[1])


class TestLedgerPages:
    """Keyset pages: every match exactly once, newest first, whatever the filter."""

    async def test_paging_and_filters(self, client, db):
        base = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
        job = uuid.uuid4()
        rows = [(uuid.uuid4(), base + datetime.timedelta(seconds=i // 3),  # ties in received_at
                 "application/xml" if i % 4 == 0 else "application/json",
                 "job_failed" if i % 10 == 0 else "ingested", job if i % 7 == 0 else None) for i in range(130)]
        await db.executemany(
            "INSERT INTO flowscribe.callbacks (id, received_at, content_type, body_sha256, body, outcome, job_id)"
            " VALUES ($1, $2, $3, 'x', '\\x00', $4, $5)", rows)
        await client.login(VIEWER_TOKEN)

        async def everything(query: str) -> list[str]:
            seen: list[str] = []
            path = "/callbacks?" + query
            while True:
                _, page = await client.get(path)
                seen += re.findall(r'<a href="/callbacks/([0-9a-f-]{36})"><code>', page)
                found = re.search(r'<a href="(/callbacks\?[^"]+)" rel="next">', page)
                if not found:
                    return seen
                path = found[1].replace("&amp;", "&")

        def expected(keep) -> list[str]:
            chosen = [r for r in rows if keep(r)]
            return [str(r[0]) for r in sorted(chosen, key=lambda r: (r[1], r[0]), reverse=True)]

        assert await everything("") == expected(lambda r: True)
        assert await everything("outcome=job_failed") == expected(lambda r: r[3] == "job_failed")
        since = (base + datetime.timedelta(seconds=10)).isoformat().replace("+", "%2B")
        assert await everything("content_type=application/xml&since=" + since) == expected(
            lambda r: r[2] == "application/xml" and r[1] >= base + datetime.timedelta(seconds=10))
        assert await everything(f"job_id={job}") == expected(lambda r: r[4] == job)
        response, page = await client.get("/callbacks?analysis_id=nope")
        assert response.status == 400 and "not a UUID" in page
        response, page = await client.get("/callbacks?after=garbage")
        assert response.status == 400 and "damaged" in page


class TestPreviewBindsTheAction:
    """A confirmed replay acts on the messages its preview showed, once, and on no others."""

    async def test_only_the_previewed_letters_and_only_once(self, console, broker):  # noqa: F811
        olga = await operator(console)
        shown = await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())), error="CheckViolationError: a")
        response, page = await olga.post("/dead-letters/replay", {"reason": "checkviolation"})
        assert response.url.path.startswith("/previews/") and shown in page and "new analysis" in page
        later = await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())), error="CheckViolationError: b")
        confirm = response.url.path + "/confirm"
        response, page = await olga.post(confirm, {})
        assert response.url.path.startswith("/jobs/")

        async def finished() -> str | None:
            _, text = await olga.get(response.url.path)
            return text if "finished" in text else None

        page = await eventually(finished, what="the replay job to finish", timeout=60)
        assert "replayed 1, skipped 0, failed 0" in page
        assert [m.message_id for m in await drain(broker)] == [later]
        assert [m.message_id for m in await drain(broker, topology.CALLBACK_QUEUE)] == [shown]
        again, _ = await olga.post(confirm, {})
        assert again.status == 404
        await olga.close()


class TestTrustedHeader:
    """Behind an authenticating proxy: the proxy's user header, believed only from the proxy."""

    async def test_header_mode(self, settings):
        from ipaddress import ip_network

        from aiohttp.test_utils import TestServer

        app = create_app(console_settings(settings, console_user_header="X-Auth-User",
                                          console_operators=("olga",), trusted_proxies=(ip_network("127.0.0.0/8"),)))
        server = TestServer(app)
        await server.start_server()
        c = Client(server)
        try:
            response, page = await c.get("/callbacks", headers={"X-Auth-User": "victor"})
            assert response.status == 200 and "victor" in page and "role-view" in page
            response, page = await c.get("/callbacks", headers={"X-Auth-User": "olga"})
            assert "role-operate" in page
            response, _ = await c.get("/callbacks")
            assert response.status == 403
            response, _ = await c.get("/healthz")  # probes come without the proxy
            assert response.status == 200
        finally:
            await c.close()
            await server.close()
        untrusted = create_app(console_settings(settings, console_user_header="X-Auth-User",
                                                trusted_proxies=(ip_network("10.0.0.0/8"),)))
        server = TestServer(untrusted)
        await server.start_server()
        c = Client(server)
        try:
            response, _ = await c.get("/callbacks", headers={"X-Auth-User": "olga"})
            assert response.status == 403
        finally:
            await c.close()
            await server.close()


class TestSettings:
    def test_credentials(self):
        s = Settings.from_env({"FLOWSCRIBE_CONSOLE_TOKENS": "a:view:tok-1, b@x.org:operate:tok-2"})
        assert [(c.name, c.role) for c in s.console_tokens] == [("a", "view"), ("b@x.org", "operate")]
        assert "tok-" not in repr(s.public())
        for bad in ("a:admin:zq9", "a:view:", "a:view:zq9,a:view:zq8", "a:view:zq9,b:view:zq9", "zq9"):
            with pytest.raises(SettingsError, match="FLOWSCRIBE_CONSOLE_TOKENS") as e:
                Settings.from_env({"FLOWSCRIBE_CONSOLE_TOKENS": bad})
            assert "zq" not in str(e.value)


class TestCommand:
    """`flowscribe-ingest console` is a process of its own: it serves, and stops on SIGTERM."""

    async def test_serves_and_stops(self, settings, http):
        from tests.support import CliProcess

        env = service_env(settings, FLOWSCRIBE_CONSOLE_PORT="0",
                          FLOWSCRIBE_CONSOLE_TOKENS="o:operate:" + OPERATOR_TOKEN)
        process = await CliProcess.start("console", env)
        listening = await process.event("console listening")
        async with http.get(f"http://127.0.0.1:{listening['port']}/login") as response:
            assert response.status == 200
        async def ready() -> bool:
            async with http.get(f"http://127.0.0.1:{listening['port']}/readyz") as response:
                return response.status == 200
        await eventually(ready, what="the console to be ready", timeout=60)
        assert await process.stop() == 0
        assert OPERATOR_TOKEN not in process.output
        refused = await CliProcess.start("console", {**env, "FLOWSCRIBE_CONSOLE_TOKENS": ""})
        assert await asyncio.wait_for(refused.process.wait(), 30) != 0
        await refused.stop()
        assert "FLOWSCRIBE_CONSOLE_TOKENS" in refused.output


async def finished_job(client: Client, path: str) -> str:
    async def done() -> str | None:
        _, text = await client.get(path)
        return text if "finished" in text else None

    return await eventually(done, what="the job to finish", timeout=60)


class TestBodiesExportAndReprocess:
    """Bodies are shown cut when large and downloaded exact; export is the CLI's NDJSON; reprocess previews first."""

    async def test_a_large_body_is_cut_on_the_page_and_exact_in_the_download(self, client, db):
        from console import ledger

        text = "x" * (ledger.WHOLE_BODY_LIMIT + 10)
        body = versioned(1, analysis_id=str(uuid.uuid4()), text=text)
        stored = await store(db, body, T0)
        await client.login(VIEWER_TOKEN)
        _, page = await client.get(f"/callbacks/{stored}")
        assert "cut, download for all of it" in page and len(page) < len(body)
        async with client.http.get(client.url(f"/callbacks/{stored}/body")) as response:
            assert await response.read() == body

    async def test_export_is_the_commands_ndjson_and_changes_nothing(self, client, broker):
        from ops.messages import FORMAT, from_record

        ids = [await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())), error=f"E{i}: x")
               for i in range(3)]
        await client.login(VIEWER_TOKEN)
        async with client.http.get(client.url("/dead-letters/export?reason=e1")) as response:
            assert response.status == 200 and response.headers["Content-Disposition"].startswith("attachment")
            lines = (await response.text()).splitlines()
        assert [json.loads(line)["message_id"] for line in lines] == [ids[1]]
        record = json.loads(lines[0])
        assert record["format"] == FORMAT and from_record(record).message_id == ids[1]
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 3

    async def test_reprocess_one_callback_after_its_preview(self, console, db, broker):  # noqa: F811
        olga = await operator(console)
        analysis = str(uuid.uuid4())
        older = await store(db, versioned(1, analysis_id=analysis), T0)
        await store(db, versioned(2, analysis_id=analysis), T0 + datetime.timedelta(seconds=1))
        response, page = await olga.post(f"/callbacks/{older}/reprocess", {})
        assert response.url.path.startswith("/previews/") and older in page and "superseded" in page
        assert await depth(broker, topology.CALLBACK_QUEUE) == 0  # a preview publishes nothing
        response, _ = await olga.post(response.url.path + "/confirm", {})
        page = await finished_job(olga, response.url.path)
        assert "published 1 for reprocessing" in page
        [message] = await drain(broker, topology.CALLBACK_QUEUE)
        assert message.message_id == older and message.headers[topology.HEADER_REPROCESS] == "1"
        await olga.close()
