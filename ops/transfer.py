"""``dlq export`` / ``dlq import``: dead letters to and from an NDJSON file.

One line per message (``ops.messages.to_record``): every property and header,
typed values tagged, the exact body in base64 with its SHA-256, so a file is
evidence that can be checked, and importing it elsewhere re-creates equivalent
messages. Export writes ``FILE.partial``, fsyncs it, renames it to ``FILE``
and fsyncs the directory; only then does ``--remove`` ack the exported
messages, so a crash at any point leaves every message in the queue or in a
complete file (or both), never in neither. Import checks the whole file
before publishing anything, then publishes each message into the dead-letter
queue with confirms.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ops import connect
from ops.dead_letters import DeadLetterQueue
from ops.errors import OpsError, UsageError
from ops.letters import DeadLetter
from ops.messages import from_record, to_record
from ops.publish import Pacer
from ops.render import Console, Progress
from runtime.errors import describe
from runtime.messages import publish_confirmed
from runtime.settings import Settings
from schemas import topology


async def export_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    to_stdout = args.file == "-"
    if to_stdout and args.remove:
        raise UsageError("--remove needs a FILE (it removes only what was written and synced to disk)")
    path = Path(args.file)
    if not to_stdout and path.exists():  # noqa: ASYNC240 - one stat, before anything runs on this loop
        raise UsageError(f"{path} exists; choose another name (an export never overwrites evidence)")
    partial = path.with_name(path.name + ".partial")
    exported: list[DeadLetter] = []
    async with connect.broker(settings) as (connection, _channel, _declared):
        async with DeadLetterQueue(connection) as queue:
            if to_stdout:
                async for letter in queue.select(args.selector):
                    console.say(json.dumps(to_record(letter.message)))
                    exported.append(letter)
            else:
                try:
                    with partial.open("x", encoding="utf-8") as f:
                        async for letter in queue.select(args.selector):
                            f.write(json.dumps(to_record(letter.message)) + "\n")
                            exported.append(letter)
                        f.flush()
                        os.fsync(f.fileno())
                    partial.replace(path)
                    _fsync_directory(path.parent)
                except OSError as e:
                    partial.unlink(missing_ok=True)
                    raise OpsError(f"cannot write {path}: {describe(e)}; nothing was removed") from None
            if args.remove:
                for letter in exported:
                    await queue.remove(letter)
    where = "stdout" if to_stdout else str(path)
    console.note(f"exported {len(exported)} to {where}"
                 + (f"; removed them from {topology.DEAD_LETTER_QUEUE}" if args.remove else ""))
    return 0


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def import_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    path = Path(args.file)
    try:
        total = _check(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {describe(e)}") from None
    imported = 0
    async with connect.broker(settings) as (_connection, _channel, declared):
        progress = Progress(console, "importing", total)
        pacer = Pacer(args.rate)
        try:
            for number, record in _records(path):
                await pacer.wait()
                try:
                    await publish_confirmed(declared.dead_letter_exchange, from_record(record),
                                    topology.DEAD_LETTER_ROUTING_KEY, settings.publish_timeout)
                except Exception as e:  # noqa: BLE001
                    raise OpsError(
                        f"the broker did not confirm the message on line {number} ({describe(e)});"
                        f" the {imported} before it were imported: import the rest from line {number} on"
                    ) from None
                imported += 1
                progress.update(imported)
        finally:
            progress.close()
    console.say(f"imported {imported} into {topology.DEAD_LETTER_QUEUE}")
    return 0


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, json.loads(line)


def _check(path: Path) -> int:
    """The number of records in the file; UsageError naming the first bad line."""
    count = 0
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                from_record(json.loads(line))
            except ValueError as e:  # RecordError, JSONDecodeError, UnicodeDecodeError
                raise UsageError(f"{path}, line {number}: {e}; nothing was imported") from None
            count += 1
    return count
