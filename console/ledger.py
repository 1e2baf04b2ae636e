"""Reading the ledger (``flowscribe.callbacks``) and what it stored, a page at a time.

Every query here is bounded: searches are keyset-paginated on (received_at, id)
with a fixed page size, a callback's body is read whole only when it is small,
child tables show their first rows and a count. The indexes that keep these
fast on millions of callbacks are migration 0005's.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import uuid
from typing import Any

import asyncpg

from schemas.payload import CHILD_TABLES
from store.connection import Connection

PAGE_SIZE = 50
# Bodies up to this size are read whole (and pretty-printed); larger ones only their head.
WHOLE_BODY_LIMIT = 1024 * 1024
BODY_HEAD = 256 * 1024
CHILD_ROWS_SHOWN = 20
VERSIONS_SHOWN = 200
TABLES = tuple(table for table, _ in CHILD_TABLES.values())


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerFilter:
    """What the Callbacks page searches for; every criterion given must hold."""

    message_id: uuid.UUID | None = None
    analysis_id: uuid.UUID | None = None
    job_id: uuid.UUID | None = None
    outcome: str | None = None
    content_type: str | None = None
    since: datetime.datetime | None = None  # received at or after
    until: datetime.datetime | None = None  # received before


@dataclasses.dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends: the (received_at, id) of its last row (pages go newest first)."""

    received_at: datetime.datetime
    id: uuid.UUID

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.received_at.isoformat()}|{self.id}".encode()).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError for anything that is not a cursor we made."""
        at, _, ident = base64.urlsafe_b64decode(text.encode("ascii")).decode().partition("|")
        received_at = datetime.datetime.fromisoformat(at)
        if received_at.tzinfo is None:
            raise ValueError("cursor without a time zone")
        return cls(received_at.astimezone(datetime.UTC), uuid.UUID(ident))  # OverflowError near the year 1


_COLUMNS = ("id, received_at, processed_at, content_type, outcome, analysis_id, job_id,"
            " octet_length(body) AS size")


def _where(f: LedgerFilter, after: Cursor | None) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    params: list[Any] = []

    def add(sql: str, value: Any) -> None:
        params.append(value)
        conditions.append(sql.replace("?", f"${len(params)}"))

    if f.message_id is not None:
        add("id = ?", f.message_id)
    if f.analysis_id is not None:
        add("analysis_id = ?", f.analysis_id)
    if f.job_id is not None:
        add("job_id = ?", f.job_id)
    if f.outcome is not None:
        add("outcome = ?", f.outcome)
    if f.content_type is not None:
        add("content_type = ?", f.content_type)
    if f.since is not None:
        add("received_at >= ?", f.since)
    if f.until is not None:
        add("received_at < ?", f.until)
    if after is not None:
        params.extend((after.received_at, after.id))
        conditions.append(f"(received_at, id) < (${len(params) - 1}, ${len(params)})")
    return (" WHERE " + " AND ".join(conditions)) if conditions else "", params


async def search(conn: Connection, f: LedgerFilter, after: Cursor | None = None,
                 limit: int = PAGE_SIZE) -> tuple[list[asyncpg.Record], Cursor | None]:
    """One page of matching callbacks, newest first, and the cursor of the next page (None: last page)."""
    where, params = _where(f, after)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM flowscribe.callbacks{where}"
        f" ORDER BY received_at DESC, id DESC LIMIT {int(limit) + 1}",
        *params,
    )
    if len(rows) > limit:
        last = rows[limit - 1]
        return rows[:limit], Cursor(last["received_at"], last["id"])
    return rows, None


async def callback(conn: Connection, message_id: uuid.UUID) -> asyncpg.Record | None:
    """One ledger row with its body (whole if small, else its first BODY_HEAD bytes)."""
    return await conn.fetchrow(
        f"SELECT {_COLUMNS}, body_sha256, trace_id,"
        " CASE WHEN octet_length(body) <= $2 THEN body ELSE substring(body FROM 1 FOR $3) END AS body_head"
        " FROM flowscribe.callbacks WHERE id = $1",
        message_id, WHOLE_BODY_LIMIT, BODY_HEAD,
    )


async def body(conn: Connection, message_id: uuid.UUID) -> bytes | None:
    """The exact bytes received."""
    value = await conn.fetchval("SELECT body FROM flowscribe.callbacks WHERE id = $1", message_id)
    return bytes(value) if value is not None else None


async def versions(conn: Connection, analysis_id: uuid.UUID) -> list[asyncpg.Record]:
    """Every callback of an analysis in the order the gateway received them (the version history)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_COLUMNS} FROM flowscribe.callbacks WHERE analysis_id = $1"
        f" ORDER BY received_at, id LIMIT {VERSIONS_SHOWN}",
        analysis_id,
    )
    return rows


@dataclasses.dataclass(slots=True)
class StoredTable:
    name: str
    total: int
    columns: list[str]
    rows: list[list[Any]]


@dataclasses.dataclass(slots=True)
class Stored:
    """What the database holds for one analysis (its stored version) and its job."""

    analysis: asyncpg.Record | None
    job: asyncpg.Record | None
    tables: list[StoredTable]


async def stored(conn: Connection, analysis_id: uuid.UUID | None, job_id: uuid.UUID | None) -> Stored:
    analysis = None
    tables: list[StoredTable] = []
    if analysis_id is not None:
        analysis = await conn.fetchrow(
            "SELECT id, job_id, language_code, date_created, received_at, callback_id,"
            " left(conversation_text, 2000) AS conversation_text, length(conversation_text) AS text_length"
            " FROM flowscribe.analyses WHERE id = $1",
            analysis_id,
        )
        for table in TABLES:
            # Table names come from the contract (CHILD_TABLES), never from a request.
            rows = await conn.fetch(
                f"SELECT *, count(*) OVER () AS total_rows FROM flowscribe.{table}"
                f" WHERE analysis_id = $1 ORDER BY id LIMIT {CHILD_ROWS_SHOWN}",
                analysis_id,
            )
            columns = [c for c in (rows[0].keys() if rows else []) if c not in ("analysis_id", "total_rows")]
            tables.append(StoredTable(table, rows[0]["total_rows"] if rows else 0, columns,
                                      [[row[c] for c in columns] for row in rows]))
    job = None
    if job_id is not None:
        job = await conn.fetchrow(
            "SELECT job_id, success, error_msg, analysis_id, received_at, callback_id FROM flowscribe.jobs"
            " WHERE job_id = $1",
            job_id,
        )
    return Stored(analysis, job, tables)


# --- overview ------------------------------------------------------------------


async def per_bucket(conn: Connection, since: datetime.datetime,
                     bucket_seconds: int) -> list[asyncpg.Record]:
    """Callbacks received since ``since``, counted per time bucket and outcome."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT to_timestamp(floor(extract(epoch FROM received_at) / $2) * $2) AS bucket, outcome,"
        " count(*) AS n FROM flowscribe.callbacks WHERE received_at >= $1 GROUP BY 1, 2",
        since, bucket_seconds,
    )
    return rows


async def lag(conn: Connection, since: datetime.datetime) -> asyncpg.Record:
    """End-to-end lag (gateway receipt to commit) percentiles of the callbacks received since ``since``.

    A reprocessed callback's processed_at is its reprocessing: such rows would
    look late, so callbacks processed more than an hour after receipt are left out.
    """
    row = await conn.fetchrow(
        "SELECT count(*) AS n,"
        " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
        "  (ORDER BY extract(epoch FROM processed_at - received_at)) AS p"
        " FROM flowscribe.callbacks"
        " WHERE received_at >= $1 AND processed_at < received_at + interval '1 hour'",
        since,
    )
    assert row is not None  # an aggregate: always one row
    return row
