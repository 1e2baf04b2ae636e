"""``dlq purge``: delete chosen dead letters for good, after showing them and asking.

The messages shown are the very ones deleted: they are held unacked while the
operator answers, then acked (or, on "no", handed back untouched).
"""

from __future__ import annotations

import argparse

from ops import connect
from ops.dead_letters import DeadLetterQueue
from ops.errors import OpsError
from ops.inspection import LIST_COLUMNS, table_row
from ops.letters import DeadLetter
from ops.render import Console, confirm, table
from runtime.settings import Settings


async def purge_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    if not (args.yes or args.dry_run or console.interactive):
        # Refuse before touching anything: a script must say --yes.
        confirm(console, "", refusal="refusing to purge dead letters")
    async with connect.broker(settings) as (connection, _channel, _declared):
        async with DeadLetterQueue(connection) as queue:
            chosen: list[DeadLetter] = [letter async for letter in queue.select(args.selector)]
            if not chosen:
                console.say("nothing to purge: no dead letter matches")
                return 0
            table(console, LIST_COLUMNS, [table_row(letter.summary()) for letter in chosen])
            if args.dry_run:
                console.say(f"dry run: would purge {len(chosen)}; nothing was changed")
                return 0
            question = (f"Delete these {len(chosen)} dead letters for good?"
                        " (keep a copy first with `flowscribe-ingest dlq export FILE`)")
            if not args.yes and not confirm(console, question, refusal="refusing to purge dead letters"):
                raise OpsError("not confirmed: nothing was purged")
            for letter in chosen:
                await queue.remove(letter)
    console.say(f"purged {len(chosen)}")
    return 0
