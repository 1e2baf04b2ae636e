"""``dlq replay``: dead letters back through the normal path; none lost, none stored twice.

Each chosen message is published to the callbacks exchange (persistent,
mandatory, confirmed) as ``ops.messages.replay_copy`` builds it: the original
message id, body and receive time, so the store's exactly-once rules hold as
for any delivery; the failure headers dropped; ``x-flowscribe-replays`` + 1.
Only once the broker has confirmed the copy is the dead letter acked. A crash
(or ``kill -9``) in between leaves the message in both queues: the next replay
publishes it again, and the worker stores one and absorbs the other as a
redelivery of the same message id. Nothing is lost at any point.

A message that still fails to decode with this version's decoder is left in
the dead-letter queue and reported as skipped (replaying it would only bring
it back); ``--force`` replays it anyway. ``--dry-run`` changes nothing: it says
for each chosen message whether it decodes now and what it would do in the
database (see ``ops.predict``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
from collections.abc import Iterator

from ops import connect, predict
from ops.dead_letters import DeadLetterQueue
from ops.letters import DeadLetter
from ops.messages import replay_copy
from ops.publish import Pacer
from ops.redecode import recheck
from ops.render import Console, Progress, shorten, table
from ops.selection import Selector
from runtime import tracing
from runtime.errors import describe
from runtime.messages import publish_confirmed
from runtime.settings import Settings
from schemas import topology
from schemas.message import Callback
from schemas.topology import Topology


async def replay_command(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    selector: Selector = args.selector
    if args.dry_run:
        return await _dry_run(settings, selector, console, force=args.force)
    counts: collections.Counter[str] = collections.Counter({"replayed": 0, "skipped": 0, "failed": 0})
    seen: set[str] = set()
    async with connect.broker(settings) as (connection, _channel, declared):
        async with DeadLetterQueue(connection) as queue:
            progress = Progress(console, "replaying", queue.depth)
            pacer = Pacer(args.rate)
            try:
                async for letter in queue.select(selector):
                    seen.add(letter.message_id)
                    result = await _replay_one(settings, console, declared, queue, letter, pacer, force=args.force)
                    counts[result] += 1
                    progress.update(letter.position, **counts)
                    if result == "failed" and connection.is_closed:
                        break  # the rest would fail the same way; they are all still dead letters
            finally:
                progress.close()
    missing = sorted(selector.ids - seen)
    for message_id in missing:
        console.note(f"not found: {message_id} is not in the dead-letter queue")
    console.say(
        f"replayed {counts['replayed']}, skipped {counts['skipped']}, failed {counts['failed']}"
        + (f", not found {len(missing)}" if missing else "")
        + ("  (skipped ones still fail to decode; --force replays them)" if counts["skipped"] else "")
    )
    return 1 if counts["failed"] or missing else 0


async def _replay_one(
    settings: Settings, console: Console, declared: Topology, queue: DeadLetterQueue, letter: DeadLetter,
    pacer: Pacer, *, force: bool,
) -> str:
    """Replay one dead letter: "replayed", "skipped" (still fails to decode) or "failed" (not confirmed)."""
    _, error = recheck(letter.message)
    if error is not None and not force:
        console.note(f"skipped {letter.message_id}: still fails: {error}")
        return "skipped"
    await pacer.wait()
    copy = replay_copy(letter.message)  # its traceparent too: the replay goes on in the callback's trace
    try:
        with tracing.publishing(copy, "replay", destination=topology.CALLBACK_EXCHANGE,
                                parent=letter.message.headers, always=True):
            await publish_confirmed(declared.callback_exchange, copy, topology.CALLBACK_ROUTING_KEY,
                                    settings.publish_timeout)
    except Exception as e:  # noqa: BLE001 - reported; the dead letter stays
        console.note(f"failed {letter.message_id}: the broker did not confirm the copy ({describe(e)});"
                     " it stays in the dead-letter queue")
        return "failed"
    await _remove(console, queue, letter)
    return "replayed"


async def _remove(console: Console, queue: DeadLetterQueue, letter: DeadLetter) -> None:
    try:
        await queue.remove(letter)
    except Exception as e:  # noqa: BLE001
        # The copy is confirmed; the dead letter returns to its queue, and
        # replaying it again is absorbed by the worker as a redelivery.
        console.note(f"warning {letter.message_id}: replayed, but it could not be removed from the"
                     f" dead-letter queue ({describe(e)}); a later replay of it changes nothing")


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """What replaying one chosen dead letter would do now (``--dry-run``; the console shows the same)."""

    position: int
    message_id: str
    reason: str
    analysis_id: str | None  # None: it does not decode (or carries no analysis)
    error: str | None  # why it still fails to decode; None if it decodes
    effect: str  # an ops.predict label; predict.STILL_FAILS when it does not decode


async def preview(settings: Settings, selector: Selector) -> list[Prediction]:
    """The predicted effect of replaying each dead letter ``selector`` chooses, in queue order; changes nothing."""
    chosen: list[tuple[DeadLetter, Callback | None, str | None]] = []
    async with connect.broker(settings) as (connection, _channel, _declared):
        async with DeadLetterQueue(connection) as queue:
            async for letter in queue.select(selector):
                callback, error = recheck(letter.message)
                chosen.append((letter, callback, error))
    decodable = [callback for _, callback, _ in chosen if callback is not None]
    effects: Iterator[str] = iter([])
    if decodable:
        async with connect.database(settings) as conn:
            effects = iter(await predict.predict(conn, decodable))
    predictions = []
    for letter, callback, error in chosen:
        analysis = callback.analysis if callback is not None else None
        predictions.append(Prediction(
            position=letter.position, message_id=letter.message_id, reason=letter.reason,
            analysis_id=str(analysis.ID) if analysis is not None else None, error=error,
            effect=predict.STILL_FAILS if callback is None else next(effects),
        ))
    return predictions


async def _dry_run(settings: Settings, selector: Selector, console: Console, *, force: bool) -> int:
    rows = []
    tally: collections.Counter[str] = collections.Counter()
    for p in await preview(settings, selector):
        rows.append({
            "position": p.position, "message_id": p.message_id, "reason": shorten(p.reason, 50),
            "decodes": "no" if p.error is not None else "yes", "analysis_id": p.analysis_id or "",
            "effect": p.effect if p.error is None else f"{p.effect}: {shorten(p.error, 60)}",
        })
        tally[p.effect] += 1
    table(console, [("position", "#"), ("message_id", "MESSAGE ID"), ("reason", "DEAD-LETTERED FOR"),
                    ("decodes", "DECODES NOW"), ("analysis_id", "ANALYSIS"), ("effect", "WOULD")], rows)
    still_fails = tally.pop(predict.STILL_FAILS, 0)
    would = sum(tally.values()) + (still_fails if force else 0)
    breakdown = ", ".join(f"{n} {effect}" for effect, n in tally.items())
    line = f"dry run: would replay {would}" + (f" ({breakdown})" if breakdown else "")
    if still_fails:
        line += (f"; {still_fails} still fail to decode"
                 + (" (replayed anyway: --force)" if force else " and would stay (--force replays them)"))
    console.say(line + "; nothing was changed")
    return 0
