"""``drift``: the fields and objects callbacks carry that the payload Structs do not know.

Reads ``flowscribe.schema_drift`` (written by the workers from a sample of the
callbacks, see ``worker.drift_log``) and says for each whether this version's
Structs know it by now: after a field is added to its Struct, its row reads
``known`` and ``reprocess --since <first seen>`` backfills it from the archive.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import asyncpg

from ops import connect
from ops.errors import OpsError
from ops.render import Console, json_line, table, when
from runtime.settings import Settings
from schemas.drift import known_fields, printable
from store import drift as drift_table

NEW, KNOWN = "new", "known"  # not in this version's Structs / in them by now


def classified(rows: Iterable[asyncpg.Record]) -> list[dict[str, Any]]:
    """The table's rows as the report shows them: names made printable, each marked new or known."""
    known = known_fields()
    return [
        {
            # Names came from the vendor's bodies: shown escaped, whatever wrote them.
            "object": printable(r["object"]), "field": printable(r["field"]), "kind": r["kind"],
            "status": KNOWN if r["field"] in known.get(r["object"], ()) else NEW,
            "first_seen": r["first_seen"], "last_seen": r["last_seen"],
            "callbacks": r["callbacks"], "example_callback_id": str(r["example_callback_id"]),
        }
        for r in rows
    ]


async def drift_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with connect.database(settings) as conn:
        rows = await drift_table.recorded(conn)
    if rows is None:
        raise OpsError("the database has no flowscribe.schema_drift table; run `flowscribe-ingest migrate`")
    found = classified(rows)
    if args.json:
        for row in found:
            json_line(console, row)
        return 0
    if not found:
        console.note("no schema drift seen: every sampled callback matched the payload Structs")
        return 0
    table(console, [("object", "OBJECT"), ("field", "FIELD"), ("kind", "KIND"), ("status", "STATUS"),
                    ("first", "FIRST SEEN"), ("last", "LAST SEEN"), ("callbacks", "CALLBACKS"),
                    ("example_callback_id", "EXAMPLE CALLBACK")],
          [{**row, "first": when(row["first_seen"]), "last": when(row["last_seen"])} for row in found])
    new = sum(1 for row in found if row["status"] == NEW)
    if new:
        console.note(f"{new} not in the payload Structs yet: add each to its Struct and a migration, then"
                     " `flowscribe-ingest reprocess --since <FIRST SEEN>` backfills it from the archive")
    return 0
