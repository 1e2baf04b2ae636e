"""The console's audit trail in PostgreSQL (``flowscribe.console_audit``, migration 0008).

One row per login, logout, preview, action and its result, export and
download, written by console.audit; read newest first, a page at a time
(keyset on ``id``), filtered by user, event, action and time.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import asyncpg

from store.connection import Connection

PAGE_SIZE = 100


@dataclasses.dataclass(frozen=True, slots=True)
class AuditFilter:
    username: str | None = None
    event: str | None = None
    action: str | None = None
    since: datetime.datetime | None = None  # at or after
    until: datetime.datetime | None = None  # before


async def record(conn: Connection, event: str, *, action: str | None, username: str | None, role: str | None,
                 remote: str | None, facts: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO flowscribe.console_audit (event, action, username, role, remote, facts)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        event, action, username, role, remote, json.dumps(facts, default=str, ensure_ascii=False),
    )


async def search(conn: Connection, f: AuditFilter, before: int | None = None,
                 limit: int = PAGE_SIZE) -> tuple[list[dict[str, Any]], int | None]:
    """One page of entries, newest first, and the id to continue before (None: last page)."""
    conditions: list[str] = []
    params: list[Any] = []
    for sql, value in (("username = ?", f.username), ("event = ?", f.event), ("action = ?", f.action),
                       ("at >= ?", f.since), ("at < ?", f.until), ("id < ?", before)):
        if value is not None:
            params.append(value)
            conditions.append(sql.replace("?", f"${len(params)}"))
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, at, event, action, username, role, remote, facts::text AS facts FROM flowscribe.console_audit"
        f"{where} ORDER BY id DESC LIMIT {int(limit) + 1}",
        *params,
    )
    entries = [{**dict(row), "facts": json.loads(row["facts"])} for row in rows[:limit]]
    return entries, (rows[limit - 1]["id"] if len(rows) > limit else None)


async def names(conn: Connection) -> tuple[list[str], list[str]]:
    """The users and the events the trail holds (for the page's filters)."""
    users = [r[0] for r in await conn.fetch(
        "SELECT DISTINCT username FROM flowscribe.console_audit WHERE username IS NOT NULL ORDER BY 1 LIMIT 200")]
    events = [r[0] for r in await conn.fetch("SELECT DISTINCT event FROM flowscribe.console_audit ORDER BY 1")]
    return users, events
