"""``flowscribe.schema_drift``: what the workers saw of fields the payload Structs do not know.

One row per (object, field); a ``Sighting`` is what a worker holds of one
between two writes, and ``record`` merges sightings into the rows the same way
``Sighting.merge`` merges them in memory: earliest first seen, latest last seen
(with its callback as the example), counts added, and ``object`` wins over
``field`` (a name seen holding nested objects somewhere is a new structure).
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid

import asyncpg

from schemas.drift import OBJECT
from store.connection import Connection

_UPSERT = """
    INSERT INTO flowscribe.schema_drift AS d
        (object, field, kind, first_seen, last_seen, callbacks, example_callback_id)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                         $6::bigint[], $7::uuid[])
    ORDER BY 1, 2  -- every writer locks rows in this order: concurrent workers never deadlock
    ON CONFLICT (object, field) DO UPDATE SET
        kind = CASE WHEN excluded.kind = 'object' THEN 'object' ELSE d.kind END,
        first_seen = least(d.first_seen, excluded.first_seen),
        last_seen = greatest(d.last_seen, excluded.last_seen),
        callbacks = d.callbacks + excluded.callbacks,
        example_callback_id = CASE WHEN excluded.last_seen >= d.last_seen
                                   THEN excluded.example_callback_id ELSE d.example_callback_id END
"""
_SELECT = """
    SELECT object, field, kind, first_seen, last_seen, callbacks, example_callback_id
    FROM flowscribe.schema_drift ORDER BY first_seen, object, field
"""


@dataclasses.dataclass(slots=True)
class Sighting:
    """One unknown (object, field) in the callbacks sampled since the last write."""

    kind: str
    first_seen: datetime.datetime
    last_seen: datetime.datetime
    callbacks: int
    example: uuid.UUID  # the latest callback that carried it

    def merge(self, other: Sighting) -> None:
        if other.kind == OBJECT:
            self.kind = OBJECT
        self.first_seen = min(self.first_seen, other.first_seen)
        if other.last_seen >= self.last_seen:
            self.last_seen, self.example = other.last_seen, other.example
        self.callbacks += other.callbacks


async def record(conn: Connection, sightings: dict[tuple[str, str], Sighting]) -> None:
    """Merge ``sightings`` into the table: one statement, its own transaction."""
    keys = sorted(sightings)
    rows = [sightings[k] for k in keys]
    await conn.execute(
        _UPSERT, [k[0] for k in keys], [k[1] for k in keys], [s.kind for s in rows],
        [s.first_seen for s in rows], [s.last_seen for s in rows], [s.callbacks for s in rows],
        [s.example for s in rows],
    )


async def recorded(conn: Connection) -> list[asyncpg.Record] | None:
    """Every row, oldest first; None if the table does not exist (the database is not migrated)."""
    if await conn.fetchval("SELECT to_regclass('flowscribe.schema_drift')") is None:
        return None
    return await conn.fetch(_SELECT)
