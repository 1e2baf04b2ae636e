"""What a message would do in the database, without doing it (``--dry-run``).

It runs the worker's own rules (``store.batch.read_stored`` and the pure
``decide``) on a read-only snapshot, with every chosen message as one batch.
The worker may take them in several batches and see other callbacks landing
meanwhile; the outcome labels can then differ (an older version landing first
is ``ingested`` and then replaced, instead of ``superseded``), but by design
the rows that end up stored do not.
"""

from __future__ import annotations

import uuid

from schemas.message import Callback
from store.connection import Connection
from store.decision import decide, read_stored
from store.outcomes import Outcome

# What each outcome means for the tables, as the operator reads it.
NEW_ANALYSIS = "new analysis"
REPLACE = "replace"
SUPERSEDED = "superseded"
DUPLICATE = "duplicate"
REDELIVERY_NOOP = "redelivery-noop"
JOB_FAILED = "job_failed"
STILL_FAILS = "still fails"


async def predict(conn: Connection, callbacks: list[Callback]) -> list[str]:
    """The effect of each of ``callbacks`` (same order) if the worker took them now."""
    first: dict[uuid.UUID, Callback] = {}
    for cb in callbacks:
        first.setdefault(cb.id, cb)
    batch = list(first.values())
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        stored = await read_stored(conn, batch)
    plan = decide(batch, stored)
    effects = []
    for cb in callbacks:
        if first[cb.id] is not cb:
            effects.append(REDELIVERY_NOOP)  # a second copy of the same message: the worker lands one
            continue
        outcome = plan.outcomes[cb.id]
        if outcome is Outcome.INGESTED:
            replaced = cb.analysis is not None and cb.analysis.ID in stored.versions
            effects.append(REPLACE if replaced else NEW_ANALYSIS)
        elif outcome is Outcome.REDELIVERED:
            effects.append(REDELIVERY_NOOP)
        else:
            effects.append(outcome.value)  # duplicate, superseded, job_failed
    return effects
