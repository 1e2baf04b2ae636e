"""The console's audit trail in PostgreSQL: every login, preview, action and result, read by any replica on the
Audit page with filters; never a token, never a body."""

from __future__ import annotations

import uuid

from tests.console_support import OPERATOR_TOKEN, VIEWER_TOKEN, Client, console  # noqa: F401
from tests.support import eventually
from tests.test_console_sessions import running, shared
from tests.test_ops import dead_letter
from tests.test_pipeline import versioned

SECRET_BODY = "body-only-" + uuid.uuid4().hex  # in a dead letter's body: must never reach the trail


async def entries(db) -> list[dict]:
    rows = await db.fetch("SELECT event, action, username, role, facts::text AS facts, remote"
                          " FROM flowscribe.console_audit ORDER BY id")
    return [dict(r) for r in rows]


async def test_who_did_what_is_kept_and_shown_on_every_replica(settings, db, broker):
    letter = await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4()), text=SECRET_BODY),
                               error="CheckViolationError: audited")
    async with running(settings, **shared()) as a, running(settings, **shared()) as b:
        olga, victor = Client(a), Client(b)
        await olga.get("/login")
        await olga.post("/login", {"token": "not-" + OPERATOR_TOKEN, "next": "/"})
        await olga.login(OPERATOR_TOKEN)
        await victor.login(VIEWER_TOKEN)
        response, _ = await olga.post("/dead-letters/purge", {"reason": "audited"})
        assert response.url.path.startswith("/previews/")
        response, _ = await olga.post(response.url.path + "/confirm", {})
        job = response.url.path.rsplit("/", 1)[1]

        async def finished() -> list[dict] | None:
            found = await entries(db)
            return found if any(e["event"] == "action finished" for e in found) else None

        found = await eventually(finished, what="the purge's result in the trail", timeout=60)
        assert [(e["event"], e["action"], e["username"]) for e in found] == [
            ("login refused", None, None), ("login", None, "olga"), ("login", None, "victor"),
            ("preview", "purge", "olga"), ("action", "purge", "olga"), ("action finished", "purge", "olga"),
        ]
        assert '"reason": "audited"' in found[3]["facts"] and '"chosen": 1' in found[3]["facts"]
        assert letter in found[4]["facts"] and job in found[4]["facts"]  # exactly the letters shown
        assert job in found[5]["facts"] and "purged 1" in found[5]["facts"]
        everything = str(found)
        assert OPERATOR_TOKEN not in everything and VIEWER_TOKEN not in everything
        assert SECRET_BODY not in everything

        # Victor (view role, the other replica) reads the trail and filters it.
        response, page = await victor.get("/audit")
        assert response.status == 200 and page.count("<tr>") == 1 + 6
        _, page = await victor.get("/audit?user=olga&action=purge")
        assert page.count("<tr>") == 1 + 3 and "victor</td>" not in page
        _, page = await victor.get("/audit?event=login+refused")
        assert page.count("<tr>") == 1 + 1 and "(not logged in)" in page
        _, page = await victor.get("/audit?since=1h&event=login")
        assert page.count("<tr>") == 1 + 2
        _, page = await victor.get("/audit?until=2000-01-01")
        assert "Nothing recorded matches" in page
        response, page = await victor.get("/audit?since=yesterday")
        assert response.status == 400 and "since" in page
        await olga.close()
        await victor.close()


async def test_the_trail_pages_newest_first(settings, db):
    for n in range(250):
        await db.execute("INSERT INTO flowscribe.console_audit (event, username) VALUES ('login', $1)", f"u{n}")
    async with running(settings) as server:
        olga = Client(server)
        await olga.login(OPERATOR_TOKEN)
        _, page = await olga.get("/audit?event=login")
        assert "<td>u249</td>" in page and "<td>u151</td>" in page and "<td>u150</td>" not in page
        seen = 0
        path: str | None = "/audit?event=login"
        while path:
            _, page = await olga.get(path)
            seen += page.count("<tr>") - 1
            marker = page.find('rel="next"')
            path = page[page.rfind('href="', 0, marker) + 6:page.find('"', page.rfind('href="', 0, marker) + 6)
                        ].replace("&amp;", "&") if marker >= 0 else None
        assert seen == 251  # 250 and olga's own login
        await olga.close()


async def test_a_page_needs_a_login(console):  # noqa: F811
    anonymous = Client(console)
    response, _ = await anonymous.get("/audit", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/login")
    await anonymous.close()
