"""``dlq list`` and ``dlq show``: what is in the dead-letter queue and why, changing nothing."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from ops import connect
from ops.dead_letters import DeadLetterQueue
from ops.errors import OpsError
from ops.letters import DeadLetter
from ops.messages import encode_value, to_record
from ops.redecode import recheck
from ops.render import Console, json_line, pretty_body, shorten, size, table, when
from runtime.settings import Settings
from schemas.topology import DEAD_LETTER_QUEUE

LIST_COLUMNS = [
    ("position", "#"),
    ("message_id", "MESSAGE ID"),
    ("dead_lettered_at", "DEAD-LETTERED"),
    ("reason", "REASON"),
    ("attempts", "ATTEMPTS"),
    ("received_at", "RECEIVED"),
    ("size", "SIZE"),
    ("content_type", "TYPE"),
    ("analysis_id", "ANALYSIS"),
]
REASON_WIDTH = 60


async def list_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    selector = args.selector
    rows = []
    async with connect.broker(settings) as (connection, _channel, _declared):
        async with DeadLetterQueue(connection) as queue:
            async for letter in queue.select(selector):
                row = letter.summary()
                if args.json:
                    json_line(console, row)  # streamed: a script sees rows as they are read
                else:
                    rows.append(row)
            depth = queue.depth
    if not args.json:
        table(console, LIST_COLUMNS, [table_row(row) for row in rows])
        console.say(f"{len(rows)} shown, {depth} in {DEAD_LETTER_QUEUE}")
    return 0


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "dead_lettered_at": when(row["dead_lettered_at"]),
        "received_at": when(row["received_at"]),
        "reason": shorten(row["reason"], REASON_WIDTH),
        "size": size(row["size"]),
    }


async def show_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    copies: list[DeadLetter] = []
    async with connect.broker(settings) as (connection, _channel, _declared):
        async with DeadLetterQueue(connection) as queue:
            copies = [letter async for letter in queue.select(args.selector)]
    if not copies:
        raise OpsError(f"no dead letter with message id {args.id} (see `flowscribe-ingest dlq list`)")
    if args.raw:
        if len(copies) > 1:
            console.note(f"{len(copies)} copies of {args.id} in the queue; writing the first")
        console.raw.write(copies[0].message.body)
        console.raw.flush()
        return 0
    for n, letter in enumerate(copies, 1):
        if args.json:
            json_line(console, {**to_record(letter.message), "position": letter.position})
            continue
        if len(copies) > 1:
            console.say(f"=== copy {n} of {len(copies)} ===")
        _show(console, letter)
    return 0


def _show(console: Console, letter: DeadLetter) -> None:
    message = letter.message
    summary = letter.summary()
    console.say(f"message id      {letter.message_id}")
    console.say(f"position        {letter.position} in {DEAD_LETTER_QUEUE}")
    console.say(f"dead-lettered   {_iso(letter.dead_lettered_at)}")
    console.say(f"reason          {letter.reason}")
    console.say(f"stage           {letter.stage}")
    console.say(f"attempts        {'' if letter.attempts is None else letter.attempts}")
    console.say(f"replays         {summary['replays']}")
    console.say(f"received        {_iso(letter.received_at)}")
    console.say(f"analysis id     {summary['analysis_id'] or ''}")
    callback, error = recheck(message)
    console.say(f"decodes now     {'yes' if callback is not None else 'no: ' + (error or '')}")
    console.say("")
    console.say("properties")
    for name in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                 "reply_to", "expiration", "timestamp", "type", "app_id", "user_id"):
        value = getattr(message, name)
        if value is not None:
            console.say(f"  {name:<17} {_iso(value) if isinstance(value, datetime.datetime) else value}")
    console.say("headers")
    for key in sorted(message.headers or {}):
        value = encode_value(message.headers[key])
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        console.say(f"  {key}: {shown}")
    console.say(f"body ({len(message.body)} bytes, {message.content_type or 'no content type'})")
    console.say(pretty_body(message.body, message.content_type))


def _iso(value: datetime.datetime | None) -> str:
    return "" if value is None else value.isoformat()
