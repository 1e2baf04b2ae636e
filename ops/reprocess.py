"""``reprocess``: run stored callbacks through the worker again, from the archive's exact bytes.

For when rows came out wrong and the fix is in the code (a decoder fix): each
chosen callback of ``flowscribe.callbacks`` is published again with its own
message id, receive time, content type and body, plus ``x-flowscribe-reprocess:
1``. The worker then re-derives its rows under the usual rules with two
differences (see ``store.batch``): its ledger row is updated, never doubled,
and it rewrites its analysis when it *is* the stored version. An older
version is ``superseded`` (also one that was ``ingested`` before a newer one
came), a ``duplicate`` stays one, a ``job_failed`` re-evaluates its job. Callbacks
that never landed are not in the archive: they are in the dead-letter queue (``dlq replay``).

A body that no longer decodes with this version's decoder is not published
(the worker would only dead-letter it) and is reported as failed. A callback
whose body ``prune`` removed cannot be reprocessed: it is counted as pruned,
not published, and its rows stay as they are.
``--dry-run`` publishes nothing and predicts each outcome (``ops.predict``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg

from ops import connect, predict
from ops.errors import OpsError
from ops.publish import Pacer
from ops.render import Console, Progress, shorten, table, when
from runtime.errors import describe
from runtime.messages import publish_confirmed
from runtime.settings import Settings
from schemas import topology
from schemas.decoding import PayloadDecodeError, decode_payload
from schemas.message import Callback, callback_message
from store.connection import Connection

PAGE = 200
NOT_REPROCESSABLE = "not reprocessable"
PRUNED_NOTE = "their archived bodies were removed by `prune`; their rows stay as they are"

_SELECT = """
    SELECT id, received_at, content_type, body_sha256, body, outcome, analysis_id
    FROM flowscribe.callbacks
    WHERE ($1::timestamptz IS NULL OR received_at >= $1)
      AND ($2::timestamptz IS NULL OR received_at < $2)
      AND ($3::uuid[] IS NULL OR analysis_id = ANY($3))
      AND ($4::text[] IS NULL OR outcome = ANY($4))
      AND ($5::uuid[] IS NULL OR id = ANY($5))
      AND (received_at, id) > ($6, $7)
    ORDER BY received_at, id
    LIMIT $8
"""
_COUNT = """
    SELECT count(*) FROM flowscribe.callbacks
    WHERE ($1::timestamptz IS NULL OR received_at >= $1)
      AND ($2::timestamptz IS NULL OR received_at < $2)
      AND ($3::uuid[] IS NULL OR analysis_id = ANY($3))
      AND ($4::text[] IS NULL OR outcome = ANY($4))
      AND ($5::uuid[] IS NULL OR id = ANY($5))
"""


def _filters(args: argparse.Namespace) -> tuple[object, ...]:
    return (args.since, args.until, args.analysis_id or None, args.outcome or None, getattr(args, "id", None) or None)


async def _archived(conn: Connection, args: argparse.Namespace) -> AsyncIterator[asyncpg.Record]:
    """Chosen ledger rows in receive order, a page at a time (bodies can be large)."""
    after: tuple[datetime.datetime, uuid.UUID] = (datetime.datetime.min.replace(tzinfo=datetime.UTC), uuid.UUID(int=0))
    left = args.limit
    while left is None or left > 0:
        page = PAGE if left is None else min(PAGE, left)
        rows = await conn.fetch(_SELECT, *_filters(args), *after, page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after = (rows[-1]["received_at"], rows[-1]["id"])
        if left is not None:
            left -= len(rows)


def _callback(row: asyncpg.Record) -> Callback:
    """The ledger row decoded as the worker will decode the reprocess message (raises PayloadDecodeError)."""
    payload = decode_payload(row["body"], row["content_type"])
    return Callback(row["id"], row["received_at"], row["content_type"], row["body_sha256"], row["body"],
                    payload, reprocess=True)


def reprocess_message(row: asyncpg.Record) -> aio_pika.Message:
    """A stored callback as the gateway published it (its own id, receive time and body), marked for reprocessing."""
    return callback_message(bytes(row["body"]), row["content_type"], message_id=str(row["id"]),
                            received_at=row["received_at"], reprocess=True)


async def reprocess_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with connect.database(settings) as conn:
        if args.dry_run:
            return await _dry_run(conn, args, console)
        total = await conn.fetchval(_COUNT, *_filters(args))
        total = total if args.limit is None else min(total, args.limit)
        counts: collections.Counter[str] = collections.Counter({"published": 0, "failed": 0, "pruned": 0})
        async with connect.broker(settings) as (_connection, _channel, declared):
            progress = Progress(console, "reprocessing", total)
            pacer = Pacer(args.rate)
            try:
                async for row in _archived(conn, args):
                    if row["body"] is None:
                        counts["pruned"] += 1
                        progress.update(sum(counts.values()), **counts)
                        continue
                    try:
                        _callback(row)
                    except PayloadDecodeError as e:
                        counts["failed"] += 1
                        console.note(f"failed {row['id']}: no longer decodes ({describe(e)}); not published")
                    else:
                        await pacer.wait()
                        try:
                            await publish_confirmed(declared.callback_exchange, reprocess_message(row),
                                            topology.CALLBACK_ROUTING_KEY, settings.publish_timeout)
                        except Exception as e:  # noqa: BLE001
                            raise OpsError(
                                f"the broker did not confirm callback {row['id']} ({describe(e)});"
                                f" {counts['published']} were published before it: run again with"
                                f" --since {row['received_at'].isoformat()} to go on from there"
                            ) from None
                        counts["published"] += 1
                    progress.update(sum(counts.values()), **counts)
            finally:
                progress.close()
    console.say(f"published {counts['published']} for reprocessing, failed {counts['failed']},"
                f" pruned {counts['pruned']}; the workers rewrite them (their ledger rows get a new processed_at)")
    if counts["pruned"]:
        console.note(f"{counts['pruned']} not reprocessable: {PRUNED_NOTE}")
    return 1 if counts["failed"] else 0


async def preview(conn: Connection, args: argparse.Namespace) -> list[dict[str, Any]]:
    """For each chosen callback (receive order): its id, receive time, analysis, outcome now, and
    ``effect``, the predicted outcome of reprocessing it (``--dry-run``; the console shows the same)."""
    chosen: list[tuple[dict[str, Any], Callback | None]] = []
    async for row in _archived(conn, args):
        shown: dict[str, Any] = {"message_id": str(row["id"]), "received_at": row["received_at"],
                                 "analysis_id": str(row["analysis_id"] or ""), "outcome": row["outcome"]}
        if row["body"] is None:
            shown["effect"] = f"{NOT_REPROCESSABLE}: body pruned"
            chosen.append((shown, None))
            continue
        try:
            chosen.append((shown, _callback(row)))
        except PayloadDecodeError as e:
            shown["effect"] = f"{predict.STILL_FAILS}: {shorten(describe(e), 60)}"
            chosen.append((shown, None))
    decodable = [cb for _, cb in chosen if cb is not None]
    effects = iter(await predict.predict(conn, decodable) if decodable else [])
    for shown, callback in chosen:
        if callback is not None:
            shown["effect"] = next(effects)
    return [shown for shown, _ in chosen]


async def _dry_run(conn: asyncpg.Connection, args: argparse.Namespace, console: Console) -> int:
    chosen = await preview(conn, args)
    tally = collections.Counter(shown["effect"].partition(":")[0] for shown in chosen)
    table(console, [("message_id", "CALLBACK ID"), ("received_at", "RECEIVED"), ("analysis_id", "ANALYSIS"),
                    ("outcome", "OUTCOME NOW"), ("effect", "WOULD")],
          [{**shown, "received_at": when(shown["received_at"])} for shown in chosen])
    breakdown = ", ".join(f"{n} {effect}" for effect, n in tally.items())
    console.say(f"dry run: would reprocess {len(chosen)}" + (f" ({breakdown})" if breakdown else "")
                + "; nothing was changed")
    return 0
