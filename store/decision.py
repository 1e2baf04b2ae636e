"""What to write for a batch: the read of what is stored, and the pure decision (rules: store.batch).

Apart from the write so that ``flowscribe-ingest dlq replay --dry-run`` and
``reprocess --dry-run`` (ops.predict) predict an outcome with the very same rules.
"""

from __future__ import annotations

import dataclasses
import uuid

from schemas.message import Callback
from store.connection import Connection
from store.outcomes import Outcome
from store.rows import SCHEMA


@dataclasses.dataclass(slots=True)
class Stored:
    """What the database already holds for the keys of a batch."""

    outcomes: dict[uuid.UUID, str]  # ledger outcome by callback id
    bodies: set[str]  # body digests
    versions: dict[uuid.UUID, tuple[object, uuid.UUID]]  # (received_at, callback_id) by analysis id


async def read_stored(conn: Connection, callbacks: list[Callback]) -> Stored:
    outcomes = {
        r[0]: r[1]
        for r in await conn.fetch(
            f"SELECT id, outcome FROM {SCHEMA}.callbacks WHERE id = ANY($1::uuid[])",
            [cb.id for cb in callbacks],
        )
    }
    bodies = {
        r[0]
        for r in await conn.fetch(
            f"SELECT DISTINCT body_sha256 FROM {SCHEMA}.callbacks WHERE body_sha256 = ANY($1::text[])",
            list({cb.body_sha256 for cb in callbacks}),
        )
    }
    analysis_ids = list({cb.analysis.ID for cb in callbacks if cb.analysis is not None})
    versions = {
        r["id"]: (r["received_at"], r["callback_id"])
        for r in await conn.fetch(
            f"SELECT id, received_at, callback_id FROM {SCHEMA}.analyses WHERE id = ANY($1::uuid[])",
            analysis_ids,
        )
    }
    return Stored(outcomes, bodies, versions)


@dataclasses.dataclass(slots=True)
class Plan:
    outcomes: dict[uuid.UUID, Outcome] = dataclasses.field(default_factory=dict)
    ledger: list[Callback] = dataclasses.field(default_factory=list)  # rows for `callbacks`
    reruns: list[Callback] = dataclasses.field(default_factory=list)  # reprocessed: ledger rows to update
    winners: dict[uuid.UUID, Callback] = dataclasses.field(default_factory=dict)  # by analysis id
    jobs: dict[uuid.UUID, Callback] = dataclasses.field(default_factory=dict)  # newest by job id


def decide(callbacks: list[Callback], stored: Stored) -> Plan:
    """Each callback's outcome and what to write; pure (see the module docstring)."""
    plan = Plan()
    seen_ids = set(stored.outcomes)
    seen_bodies = set(stored.bodies)
    versions = dict(stored.versions)
    for cb in sorted(callbacks, key=lambda c: c.version):
        rerun = cb.reprocess and cb.id in stored.outcomes
        if cb.id in seen_ids and not rerun:
            plan.outcomes[cb.id] = Outcome.REDELIVERED
            continue
        seen_ids.add(cb.id)
        (plan.reruns if rerun else plan.ledger).append(cb)
        if (stored.outcomes[cb.id] == Outcome.DUPLICATE) if rerun else (cb.body_sha256 in seen_bodies):
            plan.outcomes[cb.id] = Outcome.DUPLICATE
            continue
        seen_bodies.add(cb.body_sha256)
        if cb.job_id is not None:
            # Sorted by version: a later callback for the same job overrides.
            plan.jobs[cb.job_id] = cb
        if cb.job_failed:
            plan.outcomes[cb.id] = Outcome.JOB_FAILED
            continue
        analysis_id = cb.analysis.ID  # type: ignore[union-attr]  # job_failed covers None
        current = versions.get(analysis_id)
        if current is not None and (current > cb.version if rerun else current >= cb.version):
            plan.outcomes[cb.id] = Outcome.SUPERSEDED
            continue
        previous = plan.winners.get(analysis_id)
        if previous is not None:
            # An older version earlier in this batch never reaches the tables.
            plan.outcomes[previous.id] = Outcome.SUPERSEDED
        versions[analysis_id] = cb.version
        plan.winners[analysis_id] = cb
        plan.outcomes[cb.id] = Outcome.INGESTED
    return plan
