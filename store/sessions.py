"""The console's sessions in PostgreSQL (``flowscribe.console_sessions``, migration 0008).

Rows are found by ``key``, a keyed digest of the cookie's session id that the
caller computes (console.sessions): the table never holds a usable cookie. A
session unused for ``idle`` is gone: reads ignore it and every new session
deletes the expired ones. ``seen`` is moved forward at most once a minute per
session, so browsing the console is not a write per page.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from store.connection import Connection

SEEN_PRECISION = datetime.timedelta(minutes=1)


async def load(conn: Connection, key: bytes, idle: datetime.timedelta) -> dict[str, Any] | None:
    """The session's data if it exists and was used within ``idle``; marks it used."""
    row = await conn.fetchrow(
        "SELECT data, seen < now() - $3::interval AS stale FROM flowscribe.console_sessions"
        " WHERE key = $1 AND seen >= now() - $2::interval",
        key, idle, SEEN_PRECISION,
    )
    if row is None:
        return None
    if row["stale"]:
        await conn.execute("UPDATE flowscribe.console_sessions SET seen = now() WHERE key = $1", key)
    data: dict[str, Any] = json.loads(row["data"])
    return data


async def create(conn: Connection, key: bytes, data: dict[str, Any], idle: datetime.timedelta) -> None:
    """A new session; sessions unused for ``idle`` are deleted on the way (so the table stays small)."""
    async with conn.transaction():
        await conn.execute("DELETE FROM flowscribe.console_sessions WHERE seen < now() - $1::interval", idle)
        await conn.execute("INSERT INTO flowscribe.console_sessions (key, data) VALUES ($1, $2::jsonb)",
                           key, json.dumps(data))


async def update(conn: Connection, key: bytes, data: dict[str, Any]) -> None:
    await conn.execute("UPDATE flowscribe.console_sessions SET data = $2::jsonb, seen = now() WHERE key = $1",
                       key, json.dumps(data))


async def delete(conn: Connection, key: bytes) -> None:
    await conn.execute("DELETE FROM flowscribe.console_sessions WHERE key = $1", key)
