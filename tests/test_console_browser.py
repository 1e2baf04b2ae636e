"""The console in a real browser (Debian's headless Chromium, driven by Playwright) against a real
gateway, worker, RabbitMQ and PostgreSQL: what an operator does, seen as the operator sees it.

Screenshots of every page go to build/console-screenshots/ (not committed) for people to look at.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import shutil
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas import topology
from tests.console_support import OPERATOR_TOKEN, VIEWER_TOKEN, console  # noqa: F401
from tests.support import eventually
from tests.test_ops import depth
from tests.test_pipeline import post, versioned

CHROMIUM = os.environ.get("FLOWSCRIBE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).parent.parent / "build" / "console-screenshots"
# Seconds to wait for the pipeline on a machine that is busy with other test runs (a deadline, not a sleep).
LOADED = 60
POISON = b'{"Success": tru'  # accepted by the gateway (it never parses), dead-lettered by the worker
HOSTILE = "<script>window.__pwned = 1</script>\"><img src=x onerror=\"window.__pwned = 2\">"

pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()),
    reason=f"no Chromium at {CHROMIUM}: scripts/bootstrap installs Debian's chromium when run as root",
)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield launched
        await launched.close()


class Operator:
    """One person at one browser: a fresh context (cookies), logged in with a token."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.csp_violations: list[str] = []
        page.on("console", self._on_console)

    def _on_console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)

    async def open(self, path: str) -> Any:
        return await self.page.goto(self.base + path)

    async def shot(self, name: str, *, full: bool = True) -> None:
        await self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)

    async def login(self, token: str, *, shot: str | None = None) -> None:
        await self.open("/")
        assert self.page.url.startswith(self.base + "/login")
        await self.page.fill("input[name=token]", token)
        if shot:
            await self.shot(shot)
        await self.page.click("button[type=submit]")
        await self.page.wait_for_url(self.base + "/")


@contextlib.asynccontextmanager
async def person(browser: Any, console: Any, token: str, *, shot: str | None = None,  # noqa: F811
                 viewport: dict[str, int] | None = None) -> AsyncIterator[Operator]:
    context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
    try:
        operator = Operator(await context.new_page(), str(console.make_url("")).rstrip("/"))
        await operator.login(token, shot=shot)
        yield operator
    finally:
        await context.close()


async def rows_in(db: Any, sql: str, *args: Any) -> int:
    return await db.fetchval(sql, *args)


class TestInTheBrowser:
    """Log in, find callbacks, follow a dead letter from poison to replay, purge, and stay safe."""

    async def test_find_a_callback_by_analysis_and_see_its_versions(self, browser, console, gateway, http,  # noqa: F811
                                                                     db, start_worker):
        start_worker()
        analysis = str(uuid.uuid4())
        ids = []
        for n, body in enumerate([versioned(v, analysis_id=analysis) for v in (1, 2, 3)]
                                 + [versioned(1, analysis_id=str(uuid.uuid4()))], 1):
            # One at a time: each version is the newest when it lands, so each is ingested in its turn.
            ids.append(await post(http, gateway, body))
            await eventually(functools.partial(rows_in, db, "SELECT count(*) = $1 FROM flowscribe.callbacks", n),
                             what=f"{n} callbacks stored", timeout=LOADED)

        async with person(browser, console, OPERATOR_TOKEN, shot="01-login") as olga:
            await olga.page.wait_for_selector("figure.chart svg rect")
            await olga.shot("02-overview")
            await olga.page.click("nav >> text=Callbacks")
            await olga.page.fill("input[name=analysis_id]", analysis)
            await olga.page.click("form.filters button[type=submit]")
            results = olga.page.locator("table.results tbody tr")
            assert await results.count() == 3
            await olga.shot("03-callbacks-by-analysis")
            await olga.page.click(f"text={ids[0]}")
            await olga.page.wait_for_url(f"{olga.base}/callbacks/{ids[0]}")
            history = olga.page.locator("#versions tbody tr")
            assert await history.count() == 3
            texts = [await history.nth(i).inner_text() for i in range(3)]
            for version_id, text in zip(ids[:3], texts, strict=True):
                assert version_id in text and "ingested" in text
            assert "stored version" in texts[2] and "(this one)" in texts[0]
            assert "version 1" in await olga.page.locator("pre.body").inner_text()
            await olga.shot("04-callback-with-versions")
            assert not olga.csp_violations, olga.csp_violations

        async with person(browser, console, VIEWER_TOKEN, viewport={"width": 390, "height": 844}) as phone:
            await phone.shot("05-overview-on-a-phone")
            await phone.open(f"/callbacks/{ids[2]}")
            await phone.shot("06-callback-on-a-phone")

    async def test_dead_letter_replay_after_a_fix_and_purge(self, browser, console, gateway, http,  # noqa: F811
                                                            db, broker, start_worker):
        # A constraint deployed by mistake refuses one analysis: the worker dead-letters it (stage database).
        await db.execute("""
            CREATE FUNCTION flowscribe.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.conversation_text LIKE 'refuse me%' THEN
                    RAISE check_violation USING MESSAGE = 'refused by a mistaken constraint';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse BEFORE INSERT ON flowscribe.analyses
                FOR EACH ROW EXECUTE FUNCTION flowscribe.test_refuse();
        """)
        try:
            start_worker()
            analysis = str(uuid.uuid4())
            refused = await post(http, gateway, versioned(2, analysis_id=analysis, text="refuse me please"))
            poison = await post(http, gateway, POISON)
            await eventually(lambda: _equals(depth(broker, topology.DEAD_LETTER_QUEUE), 2), what="two dead letters",
                             timeout=LOADED)
        finally:
            await db.execute("DROP TRIGGER IF EXISTS test_refuse ON flowscribe.analyses;"
                             " DROP FUNCTION IF EXISTS flowscribe.test_refuse()")  # the fix

        async with person(browser, console, OPERATOR_TOKEN) as olga:
            await olga.page.click("nav >> text=Dead letters")
            assert await olga.page.locator("article.letter").count() == 2
            await olga.shot("07-dead-letters")
            await olga.page.fill("input[name=reason]", "mistaken constraint")
            await olga.page.click("form.filters button[type=submit]")
            letters = olga.page.locator("article.letter")
            assert await letters.count() == 1 and refused in await letters.inner_text()
            assert "database" in await letters.inner_text()
            await olga.shot("08-dead-letters-by-reason")

            await olga.page.click("text=Replay selection")
            await olga.page.wait_for_url("**/previews/**")
            preview = await olga.page.locator("table.preview").inner_text()
            assert refused in preview and "new analysis" in preview and poison not in preview
            await olga.shot("09-replay-preview")
            # A preview changes nothing (the letters it read are handed back to the queue, asynchronously).
            await eventually(lambda: _equals(depth(broker, topology.DEAD_LETTER_QUEUE), 2), what="both still there")

            await olga.page.click("text=Confirm: replay 1 message")
            await olga.page.wait_for_url("**/jobs/**")
            await olga.page.wait_for_selector("text=finished", timeout=LOADED * 1000)  # the page follows the job
            assert "replayed 1, skipped 0, failed 0" in await olga.page.locator("#output").inner_text()
            await olga.shot("10-replay-job")
            await eventually(lambda: rows_in(db, "SELECT count(*) = 1 FROM flowscribe.callbacks WHERE id = $1"
                                             " AND outcome = 'ingested'", uuid.UUID(refused)),
                             what="the replayed callback to land", timeout=LOADED)

            await olga.open(f"/dead-letters/{poison}")
            assert "decodes now" in (await olga.page.inner_text("table.kv")).lower()
            await olga.shot("11-dead-letter")
            await olga.page.click("text=Purge…")
            await olga.page.wait_for_url("**/previews/**")
            assert poison in await olga.page.locator("table.preview").inner_text()
            await olga.shot("12-purge-preview")
            await olga.page.click("text=Confirm: purge 1 message")
            await olga.page.wait_for_selector("text=finished", timeout=LOADED * 1000)
            assert "purged 1" in await olga.page.locator("#output").inner_text()
            await eventually(lambda: _equals(depth(broker, topology.DEAD_LETTER_QUEUE), 0), what="the purge")
            await olga.open("/jobs")
            await olga.shot("13-jobs")
            assert not olga.csp_violations, olga.csp_violations
        assert await rows_in(db, "SELECT count(*) FROM flowscribe.callbacks") == 1  # replayed once, stored once

    async def test_a_viewer_cannot_replay_and_a_forged_post_is_refused(self, browser, console, broker):  # noqa: F811
        from tests.test_ops import dead_letter

        await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())))
        async with person(browser, console, VIEWER_TOKEN) as victor:
            await victor.open("/dead-letters")
            assert await victor.page.locator("article.letter").count() == 1
            assert await victor.page.locator("text=Replay selection").count() == 0
            await victor.shot("14-dead-letters-as-viewer")
            token = await victor.page.locator("input[name=csrf]").first.get_attribute("value")
            refused = await victor.page.request.post(f"{victor.base}/dead-letters/replay",
                                                     form={"csrf": token, "all": "1"}, max_redirects=0)
            assert refused.status == 403 and "may only view" in await refused.text()
        async with person(browser, console, OPERATOR_TOKEN) as olga:
            # Logged in, but the request does not carry the session's CSRF token: refused.
            forged = await olga.page.request.post(f"{olga.base}/dead-letters/purge", form={"all": "1"},
                                                  max_redirects=0)
            assert forged.status == 403 and "CSRF" in await forged.text()
        await eventually(lambda: _equals(depth(broker, topology.DEAD_LETTER_QUEUE), 1), what="the letter untouched")

    async def test_a_script_in_a_body_renders_inert(self, browser, console, gateway, http, db, broker,  # noqa: F811
                                                    start_worker):
        start_worker()
        stored = await post(http, gateway, versioned(1, analysis_id=str(uuid.uuid4()), text=HOSTILE))
        xml = ("<?xml version='1.0'?><!DOCTYPE r [<!ENTITY e 'x'>]><r><script>window.__pwned = 3</script>"
               f"<a onclick=\"window.__pwned = 4\">{HOSTILE.replace('<', '&lt;')}</a>&e;</r>").encode()
        letter = await post(http, gateway, xml, "application/xml")
        await eventually(lambda: rows_in(db, "SELECT count(*) = 1 FROM flowscribe.callbacks"), what="stored",
                         timeout=LOADED)
        await eventually(lambda: _equals(depth(broker, topology.DEAD_LETTER_QUEUE), 1), what="dead-lettered",
                         timeout=LOADED)
        async with person(browser, console, OPERATOR_TOKEN) as olga:
            for path, shot in [(f"/callbacks/{stored}", "15-hostile-callback"), (f"/dead-letters/{letter}", None),
                               ("/dead-letters", None), ("/", None)]:
                await olga.open(path)
                for details in await olga.page.locator("details").all():
                    await details.locator("summary").click()  # open every body, as a curious operator would
                shown = olga.page.locator("pre.body:visible")
                for i in range(await shown.count()):
                    await shown.nth(i).hover()
                assert await olga.page.evaluate("window.__pwned") is None, path
                assert await olga.page.locator("img, r, a[onclick]").count() == 0, path
                if shot:
                    assert "<script>window.__pwned = 1</script>" in await olga.page.locator("pre.body").inner_text()
                    await olga.shot(shot)


async def _equals(awaitable: Any, expected: int) -> bool:
    return await awaitable == expected


class TestRedirects:
    """After login the browser goes where the console decided, on the URL as Chromium itself resolves it."""

    async def test_a_link_with_a_tab_in_next_does_not_send_a_logged_in_operator_elsewhere(
            self, browser, console):  # noqa: F811
        # (A login form's POST redirected elsewhere is already stopped by the CSP's form-action 'self'; a
        # logged-in operator following a link to /login is redirected by a plain GET, which nothing else stops.)
        async with person(browser, console, OPERATOR_TOKEN) as olga:
            from playwright.async_api import Error as BrowserError

            for raw in ("/\t/evil.example/", "/\n/evil.example/", "/\\evil.example/", "/.//evil.example/"):
                try:
                    await olga.open(f"/login?next={urllib.parse.quote(raw, safe='')}")
                except BrowserError as e:  # before the fix: net::ERR_NAME_NOT_RESOLVED (evil.example)
                    raise AssertionError(f"{raw!r} led the browser off the console: {e}") from None
                assert olga.page.url == olga.base + "/", (raw, olga.page.url)

    async def test_chromium_resolves_every_decided_target_on_the_console(self, browser, console):  # noqa: F811
        from console.redirects import local_target
        from tests.test_console_redirects import ELSEWHERE, HERE

        async with person(browser, console, VIEWER_TOKEN) as victor:
            values = [*ELSEWHERE, *HERE]
            verdicts = await victor.page.evaluate(
                "values => values.map(v => new URL(v, location.href).origin === location.origin)",
                [local_target(v) for v in values])
            assert all(verdicts), [v for v, ok in zip(values, verdicts, strict=True) if not ok]
            # And the browser agrees that the raw values lead off the console (but the relative ones: the
            # console is served over http here, so http:evil.example is a relative path too).
            others = [v for v in ELSEWHERE if v not in ("", "evil.example", "http:evil.example")]
            raw = await victor.page.evaluate(
                "values => values.map(v => { try { const u = new URL(v, location.href);"
                " return u.origin === location.origin && !u.pathname.startsWith('//'); }"
                " catch (e) { return false; } })", others)
            assert not any(raw), [v for v, ok in zip(others, raw, strict=True) if ok]



ELSEWHERE = "http://elsewhere.example"  # another site (a chat, an alert e-mail), served by the test itself


async def _another_site(base: str, route: Any) -> None:
    await route.fulfill(status=200, content_type="text/html", body=f"""<!doctype html><title>chat</title>
        <a id="alert" href="{base}/callbacks?since=2h">FlowscribeDeadLetters firing</a>
        <form id="forged" method="post" action="{base}/dead-letters/purge">
          <input name="all" value="1"><input name="csrf" value="guessed"></form>
        <form id="logout" method="post" action="{base}/logout"><input name="csrf" value="guessed"></form>""")


class TestLinksFromElsewhere:
    """A link on another site opens the console logged in; a form on another site changes nothing."""

    async def test_a_link_from_another_site_finds_the_operator_logged_in(self, browser, console, broker):  # noqa: F811
        from tests.test_ops import dead_letter

        await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())))
        async with person(browser, console, OPERATOR_TOKEN) as olga:
            await olga.page.context.route(f"{ELSEWHERE}/**", functools.partial(_another_site, olga.base))
            await olga.page.goto(f"{ELSEWHERE}/chat")
            await olga.page.click("#alert")
            await olga.page.wait_for_load_state()
            # Before: SameSite=Strict left the cookie behind, and the console sent the operator to log in again.
            assert olga.page.url == f"{olga.base}/callbacks?since=2h", olga.page.url
            assert "olga" in await olga.page.locator("header .who").inner_text()

            for form in ("#forged", "#logout"):
                await olga.page.goto(f"{ELSEWHERE}/chat")
                async with olga.page.expect_navigation():
                    await olga.page.locator(form).evaluate("f => f.submit()")
                assert "log in first" in await olga.page.content() or "refused" in await olga.page.content()
            # Neither the forged purge nor the forged logout did anything, and the operator's cookie survived.
            await olga.open("/dead-letters")
            assert olga.page.url == f"{olga.base}/dead-letters"
            assert await olga.page.locator("article.letter").count() == 1
        await eventually(lambda: _equals(depth(broker, topology.DEAD_LETTER_QUEUE), 1), what="the letter untouched")


class TestReplicas:
    """Sessions in PostgreSQL, seen from a browser: a restart and a second replica keep the operator logged in."""

    async def test_a_restart_and_another_replica_keep_the_login_and_a_logout_ends_it_on_both(self, browser,
                                                                                             settings):
        from tests.test_console_sessions import running, shared

        context = await browser.new_context()
        try:
            async with running(settings, **shared()) as first:
                olga = Operator(await context.new_page(), str(first.make_url("")).rstrip("/"))
                await olga.login(OPERATOR_TOKEN)
            async with running(settings, **shared()) as restarted, running(settings, **shared()) as replica:
                # The cookie is the host's (127.0.0.1), whichever port: as two replicas behind one address.
                for server in (restarted, replica):
                    olga.base = str(server.make_url("")).rstrip("/")
                    await olga.open("/callbacks")
                    assert olga.page.url == olga.base + "/callbacks", olga.page.url
                    assert "olga" in await olga.page.locator("header .who").inner_text()
                await olga.page.click("text=log out")  # on the replica
                await olga.page.wait_for_url("**/login")
                olga.base = str(restarted.make_url("")).rstrip("/")
                await olga.open("/callbacks")
                assert olga.page.url.startswith(olga.base + "/login"), olga.page.url
        finally:
            await context.close()


class TestAuditPage:
    """The trail as an operator and a viewer read it: filters work, what an operator typed is shown inert."""

    async def test_a_viewer_reads_what_an_operator_did(self, browser, console, broker):  # noqa: F811
        from tests.test_ops import dead_letter

        await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())), error="PayloadDecodeError: " + HOSTILE)
        async with person(browser, console, OPERATOR_TOKEN) as olga:
            await olga.open("/dead-letters")
            await olga.page.fill("input[name=reason]", HOSTILE)  # the selection is kept in the trail
            await olga.page.click("form.filters button[type=submit]")
            assert await olga.page.locator("article.letter").count() == 1
            await olga.page.click("text=Purge selection")
            await olga.page.wait_for_url("**/previews/**")
        async with person(browser, console, VIEWER_TOKEN) as victor:
            await victor.page.click("nav >> text=Audit")
            await victor.page.wait_for_url("**/audit")
            rows = victor.page.locator("table.audit tbody tr")
            assert await rows.count() == 3  # olga's login, her preview, victor's login
            await victor.page.select_option("select[name=user]", "olga")
            await victor.page.select_option("select[name=action]", "purge")
            await victor.page.click("form.filters button[type=submit]")
            await victor.page.wait_for_url("**/audit?**")
            assert await rows.count() == 1
            text = await rows.inner_text()
            assert "preview" in text and "purge" in text
            assert "<script>window.__pwned = 1</script>" in text  # shown as text, not markup
            assert await victor.page.evaluate("window.__pwned") is None
            assert await victor.page.locator("main img").count() == 0
            await victor.shot("16-audit")
            assert not victor.csp_violations, victor.csp_violations


class TestSchemaDriftPage:
    """The drift report as a page: each field with its counts, its example callback one click away, the next step."""

    async def test_new_and_known_fields_with_their_next_steps(self, browser, console, db):  # noqa: F811
        from schemas.drift import known_fields
        from store import drift
        from tests.test_ops import store
        from tests.test_pipeline import T0

        example = await store(db, versioned(1, analysis_id=str(uuid.uuid4())), T0)
        known_object, known = next((o, sorted(f)[0]) for o, f in sorted(known_fields().items()) if f)
        first, last = T0, T0.replace(hour=T0.hour + 1)
        async with db.acquire() as conn:
            await drift.record(conn, {
                ("Payload", HOSTILE): drift.Sighting("field", first, last, 7, uuid.UUID(example)),
                (known_object, known): drift.Sighting("field", first, last, 3, uuid.UUID(example)),
            })
        async with person(browser, console, VIEWER_TOKEN) as victor:
            await victor.page.click("nav >> text=Schema drift")
            await victor.page.wait_for_url("**/drift")
            rows = victor.page.locator("table.drift tbody tr")
            assert await rows.count() == 2
            new = await victor.page.locator("tr.status-new").inner_text()
            assert HOSTILE in new and "7" in new and "schemas/payload.py" in new
            assert await victor.page.evaluate("window.__pwned") is None
            assert await victor.page.locator("main img").count() == 0
            step = await victor.page.locator("tr.status-known td.step").inner_text()
            assert f"reprocess --since {first.isoformat()} --dry-run" in step
            await victor.shot("17-schema-drift")
            await victor.page.locator("tr.status-new a").click()
            await victor.page.wait_for_url(f"**/callbacks/{example}")
            assert not victor.csp_violations, victor.csp_violations


class TestArchivePage:
    """Prune from the console: what it would remove first, then confirmed, as a job; viewers may only look."""

    async def test_preview_confirm_and_the_job_prunes_exactly_that(self, browser, console, db):  # noqa: F811
        from tests.test_ops import store
        from tests.test_pipeline import T0

        old = [await store(db, versioned(1, analysis_id=str(uuid.uuid4())), T0) for _ in range(3)]
        recent = await store(db, versioned(1, analysis_id=str(uuid.uuid4())),
                             datetime.datetime.now(datetime.UTC))
        async with person(browser, console, VIEWER_TOKEN) as victor:
            await victor.page.click("nav >> text=Archive")
            await victor.page.wait_for_url("**/archive")
            assert "archived bodies" in await victor.page.locator("table.archive-sizes").inner_text()
            assert await victor.page.locator("text=Prune…").count() == 0
            token = await victor.page.locator("input[name=csrf]").first.get_attribute("value")
            refused = await victor.page.request.post(f"{victor.base}/archive/prune",
                                                     form={"csrf": token, "older_than": "1d"}, max_redirects=0)
            assert refused.status == 403 and "may only view" in await refused.text()
        async with person(browser, console, OPERATOR_TOKEN) as olga:
            await olga.open("/archive")
            await olga.page.fill("input[name=older_than]", "7d")
            await olga.shot("18-archive")
            await olga.page.click("text=Prune…")
            await olga.page.wait_for_url("**/previews/**")
            summary = await olga.page.locator("table.prune-preview").inner_text()
            assert "3" in summary.split("\n")[0] and "ingested" in summary
            await olga.shot("19-prune-preview")
            assert await rows_in(db, "SELECT count(*) FROM flowscribe.callbacks WHERE body IS NULL") == 0
            await olga.page.click("text=Confirm: prune 3 bodies")
            await olga.page.wait_for_url("**/jobs/**")
            await olga.page.wait_for_selector("text=finished", timeout=LOADED * 1000)
            assert "removed 3 archived bodies" in await olga.page.locator("#output").inner_text()
            await olga.shot("20-prune-job")
            assert not olga.csp_violations, olga.csp_violations
        pruned = {str(r["id"]) for r in await db.fetch("SELECT id FROM flowscribe.callbacks WHERE body IS NULL")}
        assert pruned == set(old) and recent not in pruned
        trail = [tuple(r) for r in await db.fetch(
            "SELECT event, username FROM flowscribe.console_audit WHERE action = 'prune' ORDER BY id")]
        assert trail == [("preview", "olga"), ("action", "olga"), ("action finished", "olga")]
