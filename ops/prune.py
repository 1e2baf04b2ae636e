"""``prune``: keep the archive bounded: remove old callbacks' bodies (and, with ``--ledger``, old ledger rows).

Bodies: ``flowscribe.callbacks.body`` of every callback received before the cut-off
becomes NULL. The rest of its ledger row stays, ``body_sha256`` included, so a
vendor retry of a pruned body is still a ``duplicate`` (the worker compares
digests, never bodies). What is lost: ``reprocess`` cannot re-derive those
callbacks any more (it reports them as pruned); their rows in the analysis
tables stay as they are.

``--ledger``: also deletes the old ledger rows, except the row of each stored
version (``analyses.callback_id``) and of each job's latest callback
(``jobs.callback_id``), which stay, body removed, so every stored row still
names the callback it came from. A deleted row no longer recognises a vendor
retry of its body (it would land as a newer version of the same analysis),
nor a redelivery of its message: choose an age far beyond any retry.

Workers are never held up: each batch of at most ``--batch-size`` rows (taken
in receive order, by key) is one short transaction, and rows a worker has
locked at that moment (a callback being reprocessed) are skipped rather than
waited for (``SKIP LOCKED``); the next run takes them. Nor starved: a batch
keeps the database (and on a small machine a core) busy, so after each one it
pauses until batches have taken at most ``--duty-cycle`` of the time. The space is reused by
new bodies once (auto)vacuum has passed; the table stops growing rather than
shrinking on disk.

SIGTERM or SIGINT stop it between two batches: what is done is committed and
counted, the summary says it is incomplete, and the next run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import time
import uuid

import asyncpg

from ops import connect
from ops.errors import UsageError
from ops.render import Console, Progress, json_line, size, when
from runtime.lifecycle import stop_on_signals
from runtime.settings import Settings

_EPOCH = (datetime.datetime.min.replace(tzinfo=datetime.UTC), uuid.UUID(int=0))

# Whether a ledger row is where a stored row points: such rows are kept by --ledger.
_REFERENCED = """(
    EXISTS (SELECT 1 FROM flowscribe.analyses a WHERE a.id = c.analysis_id AND a.callback_id = c.id)
    OR EXISTS (SELECT 1 FROM flowscribe.jobs j WHERE j.job_id = c.job_id AND j.callback_id = c.id)
)"""

_SURVEY_BODIES = """
    SELECT count(*) AS bodies, coalesce(sum(pg_column_size(body)), 0)::bigint AS bytes,
           min(received_at) AS oldest, max(received_at) AS newest, 0::bigint AS deleted
    FROM flowscribe.callbacks WHERE received_at < $1 AND body IS NOT NULL
"""
_SURVEY_LEDGER = f"""
    SELECT count(*) FILTER (WHERE body IS NOT NULL AND {_REFERENCED}) AS bodies,
           coalesce(sum(pg_column_size(body)), 0)::bigint AS bytes,
           min(received_at) AS oldest, max(received_at) AS newest,
           count(*) FILTER (WHERE NOT {_REFERENCED}) AS deleted
    FROM flowscribe.callbacks c WHERE received_at < $1
"""
_OUTCOMES = """
    SELECT outcome, count(*) AS n FROM flowscribe.callbacks
    WHERE received_at < $1 AND body IS NOT NULL GROUP BY outcome ORDER BY outcome
"""

# One batch of bodies: a single statement, i.e. its own short transaction.
_PRUNE_BODIES = """
    WITH chosen AS (
        SELECT id, received_at, pg_column_size(body) AS bytes FROM flowscribe.callbacks
        WHERE received_at < $1 AND body IS NOT NULL AND (received_at, id) > ($2, $3)
        ORDER BY received_at, id LIMIT $4
        FOR UPDATE SKIP LOCKED
    )
    UPDATE flowscribe.callbacks c SET body = NULL FROM chosen WHERE c.id = chosen.id
    RETURNING chosen.id, chosen.received_at, chosen.bytes, true AS has_body, false AS deleted
"""
# One batch of the ledger: delete the rows nothing points to, empty the body of the others.
_PRUNE_LEDGER = f"""
    WITH chosen AS (
        SELECT c.id, c.received_at, coalesce(pg_column_size(c.body), 0) AS bytes,
               c.body IS NOT NULL AS has_body, {_REFERENCED} AS referenced
        FROM flowscribe.callbacks c
        WHERE c.received_at < $1 AND (c.received_at, c.id) > ($2, $3)
        ORDER BY c.received_at, c.id LIMIT $4
        FOR UPDATE OF c SKIP LOCKED
    ), deleted AS (
        DELETE FROM flowscribe.callbacks c USING chosen
        WHERE c.id = chosen.id AND NOT chosen.referenced
        RETURNING c.id
    ), emptied AS (
        UPDATE flowscribe.callbacks c SET body = NULL FROM chosen
        WHERE c.id = chosen.id AND chosen.referenced AND chosen.has_body
        RETURNING c.id
    )
    -- The data-modifying CTEs run to completion whether read or not (PostgreSQL's rule).
    SELECT id, received_at, bytes, has_body, NOT referenced AS deleted FROM chosen
"""


@dataclasses.dataclass(slots=True)
class Tally:
    """What a prune did (or, with --dry-run, would do)."""

    mode: str  # "bodies" or "ledger"
    older_than: datetime.datetime
    dry_run: bool
    bodies_pruned: int = 0  # bodies removed from rows that stay
    ledger_rows_deleted: int = 0  # whole rows deleted (--ledger), bodies and all
    bytes: int = 0  # the removed bodies as stored (compressed)
    batches: int = 0
    longest_batch_ms: float = 0.0
    oldest_received_at: datetime.datetime | None = None
    newest_received_at: datetime.datetime | None = None
    complete: bool = True  # False: stopped by a signal; run it again to go on

    def add(self, rows: list[asyncpg.Record], ms: float) -> None:
        self.batches += 1
        self.longest_batch_ms = max(self.longest_batch_ms, ms)
        for row in rows:
            if row["has_body"]:
                self.bytes += row["bytes"]
            if row["deleted"]:
                self.ledger_rows_deleted += 1
            elif row["has_body"]:
                self.bodies_pruned += 1
            at = row["received_at"]
            self.oldest_received_at = min(self.oldest_received_at or at, at)
            self.newest_received_at = max(self.newest_received_at or at, at)


async def prune_command(settings: Settings, args: argparse.Namespace, console: Console,
                        stop: asyncio.Event | None = None) -> int:
    """``stop``: set to stop between two batches; None: SIGTERM/SIGINT do (a process of its own, the CLI)."""
    cutoff: datetime.datetime = args.older_than
    if cutoff > datetime.datetime.now(datetime.UTC):
        raise UsageError("--older-than must be in the past (an age like 90d, or a past timestamp)")
    tally = Tally("ledger" if args.ledger else "bodies", cutoff, args.dry_run)
    async with connect.database(settings) as conn:
        survey = await conn.fetchrow(_SURVEY_LEDGER if args.ledger else _SURVEY_BODIES, cutoff)
        assert survey is not None  # an aggregate without GROUP BY: always one row
        if args.dry_run:
            tally.bodies_pruned, tally.bytes = survey["bodies"], survey["bytes"]
            tally.ledger_rows_deleted = survey["deleted"]
            tally.oldest_received_at, tally.newest_received_at = survey["oldest"], survey["newest"]
            outcomes = {r["outcome"]: r["n"] for r in await conn.fetch(_OUTCOMES, cutoff)}
            _report(console, tally, args.json, outcomes)
            return 0
        total = survey["bodies"] + (survey["deleted"] if args.ledger else 0)
        progress = Progress(console, "pruning", total)
        if stop is not None:  # in a process with its own signal handling (the console): leave it alone
            await _prune(conn, tally, args.batch_size, args.duty_cycle, progress, stop)
        else:
            stop = asyncio.Event()
            with stop_on_signals(stop):
                await _prune(conn, tally, args.batch_size, args.duty_cycle, progress, stop)
    _report(console, tally, args.json)
    return 0


async def _prune(conn: asyncpg.Connection, tally: Tally, batch_size: int, duty_cycle: float,
                 progress: Progress, stop: asyncio.Event) -> None:
    statement = _PRUNE_LEDGER if tally.mode == "ledger" else _PRUNE_BODIES
    after = _EPOCH
    try:
        while True:
            if stop.is_set():
                tally.complete = False
                return
            started = time.perf_counter()
            rows = await conn.fetch(statement, tally.older_than, *after, batch_size)
            took = time.perf_counter() - started
            tally.add(rows, took * 1000)
            if rows:
                last = max(rows, key=lambda r: (r["received_at"], r["id"]))
                after = (last["received_at"], last["id"])
            progress.update(tally.bodies_pruned + tally.ledger_rows_deleted,
                            bodies=tally.bodies_pruned, rows_deleted=tally.ledger_rows_deleted)
            # Rows locked by a worker were skipped, not counted: fewer than a batch means the end.
            if len(rows) < batch_size:
                return
            # Yield the machine to the workers for a while (a signal cuts the pause short).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), took * (1 / duty_cycle - 1))
    finally:
        progress.close()


def _report(console: Console, tally: Tally, as_json: bool, outcomes: dict[str, int] | None = None) -> None:
    summary = dataclasses.asdict(tally)
    if outcomes is not None:
        summary["bodies_by_outcome"] = outcomes
    summary["no_longer_reprocessable"] = tally.bodies_pruned + tally.ledger_rows_deleted
    if tally.bodies_pruned or tally.ledger_rows_deleted:
        console.note(("once pruned, " if tally.dry_run else "")
                     + f"callbacks received before {when(tally.older_than)} can no longer be reprocessed"
                     " (`reprocess` reports them as pruned); their rows in the analysis tables stay."
                     " Duplicate detection keeps working for removed bodies"
                     + (", not for deleted ledger rows" if tally.mode == "ledger" else "") + ".")
    if as_json:
        json_line(console, summary)
        return
    verb = "would remove" if tally.dry_run else "removed"
    what = f"{verb} {tally.bodies_pruned} archived bodies ({size(tally.bytes)} as stored)"
    if tally.mode == "ledger":
        what += f" and {'would delete' if tally.dry_run else 'deleted'} {tally.ledger_rows_deleted} ledger rows"
    span = (f", received {when(tally.oldest_received_at)} to {when(tally.newest_received_at)}"
            if tally.oldest_received_at else "")
    console.say(f"{what} of callbacks received before {when(tally.older_than)}{span}"
                + (f" in {tally.batches} batches (longest {tally.longest_batch_ms:.0f} ms)" if tally.batches else ""))
    if outcomes:
        console.say("by outcome: " + ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items()))
    if not tally.complete:
        console.say("stopped before the end (signal): what is reported is done; run it again to go on")
    if tally.dry_run:
        console.say("dry run: nothing was changed")
