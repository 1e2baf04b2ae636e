"""Write a batch of callbacks in one transaction, converging whatever the delivery order.

Per batch, inside one transaction:

1. Take transaction-scoped advisory locks on every key the batch touches
   (message ids, body digests, analysis ids, job ids), in sorted order. Two
   workers holding versions of the same analysis, or the same body, serialise
   here; the sorted order rules out deadlocks between our own transactions.
2. Read what is already stored for those keys.
3. Decide each callback's outcome in version order, in memory:
   - a message id already stored: a redelivery; nothing is written;
   - a body already stored (the vendor retrying): ``duplicate``;
   - Flowscribe reports failure or sent no analysis: ``job_failed``;
   - newer than the stored version of its analysis (or the first): ``ingested``,
     replacing every row of that analysis;
   - older than the stored version: ``superseded``, nothing of it is written.
4. Write with bulk operations only: one DELETE per table for replaced analyses,
   one COPY per table for new rows, one upsert for jobs.

A *reprocess* message (header ``x-flowscribe-reprocess``, published by
``flowscribe-ingest reprocess`` with a stored callback's own id and body)
re-derives that callback's rows, e.g. after a decoder fix. Its id being stored
is then the point, not a redelivery, and its body is of course stored already:
it stays a ``duplicate`` only if its ledger row says so (that is fixed by the
order callbacks arrived in, which reprocessing does not change). Otherwise the
rules above apply, except that it rewrites its analysis when its version is
the stored one too (``>=``), and its ledger row is updated, never inserted.

``read_stored`` and ``decide`` (store.decision) are the read and the pure
decision, apart from the writes, so that ``flowscribe-ingest dlq replay
--dry-run`` can predict an outcome with the very same rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any

from schemas.message import Callback
from store.connection import Connection
from store.decision import Plan, decide, read_stored
from store.outcomes import Outcome
from store.rows import ANALYSIS_COLUMNS, CALLBACK_COLUMNS, CHILD_COLUMNS, SCHEMA, analysis_row, child_rows


@dataclasses.dataclass(slots=True)
class BatchResult:
    outcomes: dict[uuid.UUID, Outcome]  # by callback id
    rows: dict[str, int]  # rows written per table


def lock_key(kind: str, value: object) -> int:
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_keys(callbacks: list[Callback]) -> list[int]:
    keys: set[int] = set()
    for cb in callbacks:
        keys.add(lock_key("message", cb.id))
        keys.add(lock_key("body", cb.body_sha256))
        if cb.analysis is not None:
            keys.add(lock_key("analysis", cb.analysis.ID))
        if cb.job_id is not None:
            keys.add(lock_key("job", cb.job_id))
    return sorted(keys)


async def lock(conn: Connection, keys: list[int]) -> None:
    """Transaction-scoped advisory locks on ``keys``, taken in sorted order (no deadlocks among us)."""
    await conn.execute(
        "SELECT count(pg_advisory_xact_lock(k))"
        " FROM (SELECT k FROM unnest($1::bigint[]) AS k ORDER BY k) AS keys",
        keys,
    )


async def write_batch(conn: Connection, callbacks: list[Callback]) -> BatchResult:
    """Decide and write ``callbacks`` in one transaction; nothing is written if it raises."""
    async with conn.transaction():
        await lock(conn, lock_keys(callbacks))
        # pg_current_xact_id() gives the transaction an id even when it writes
        # nothing (a batch of redeliveries), so its commit waits for a synchronous
        # standby like any other: a batch whose earlier commit was only local (its
        # wait for the standby cut short) is acked only once the standby has it.
        await conn.execute("SELECT pg_current_xact_id()")
        stored = await read_stored(conn, callbacks)
        plan = decide(callbacks, stored)
        rows = await _write(conn, plan, set(stored.versions))
    return BatchResult(plan.outcomes, rows)


async def _copy(conn: Connection, table: str, columns: list[str], records: list[tuple[Any, ...]]) -> int:
    if records:
        await conn.copy_records_to_table(
            table, schema_name=SCHEMA, columns=columns, records=records
        )
    return len(records)


async def write_summaries(conn: Connection, analysis_ids: list[uuid.UUID]) -> dict[str, int]:
    """(Re)write the per-conversation summaries the analytics views read (migrations 0003, 0007).

    Computed by PostgreSQL from the rows just written, in the same transaction: exactly as
    current as the rows, and one definition shared with the migration that backfills them.
    In Python from the decoded payloads it cost about as much CPU, nearly all of it the
    worker's, the busiest process of a deployment (bench/ANALYTICS.md). Returns the rows
    written per table.
    """
    if not analysis_ids:
        return {}
    written = await conn.fetchrow(f"SELECT * FROM {SCHEMA}.summarise($1::uuid[])", analysis_ids)
    assert written is not None
    return {"conversation_summaries": written["summaries"]}


async def _write(conn: Connection, plan: Plan, stored: set[uuid.UUID]) -> dict[str, int]:
    rows: dict[str, int] = {}
    replaced = [analysis_id for analysis_id in plan.winners if analysis_id in stored]
    if replaced:
        for table in (*CHILD_COLUMNS, "analyses"):
            key = "id" if table == "analyses" else "analysis_id"
            await conn.execute(f"DELETE FROM {SCHEMA}.{table} WHERE {key} = ANY($1::uuid[])", replaced)

    winners = list(plan.winners.values())
    rows["analyses"] = await _copy(conn, "analyses", ANALYSIS_COLUMNS, [analysis_row(cb) for cb in winners])
    for table, (attribute, columns) in CHILD_COLUMNS.items():
        records = [row for cb in winners for row in child_rows(cb.analysis, attribute)]  # type: ignore[arg-type]
        rows[table] = await _copy(conn, table, columns, records)
    rows.update(await write_summaries(conn, list(plan.winners)))

    if plan.jobs:
        jobs = list(plan.jobs.values())
        await conn.execute(
            f"""
            INSERT INTO {SCHEMA}.jobs AS j (job_id, success, error_msg, analysis_id, received_at, callback_id)
            SELECT * FROM unnest($1::uuid[], $2::boolean[], $3::text[], $4::uuid[], $5::timestamptz[], $6::uuid[])
            ON CONFLICT (job_id) DO UPDATE SET
                success = excluded.success, error_msg = excluded.error_msg,
                analysis_id = excluded.analysis_id, received_at = excluded.received_at,
                callback_id = excluded.callback_id
            WHERE (j.received_at, j.callback_id) <= (excluded.received_at, excluded.callback_id)
            """,  # "=": only a reprocessed callback meets its own job row, which it rewrites
            [cb.job_id for cb in jobs],
            [cb.payload.JobStatus.Success for cb in jobs],  # type: ignore[union-attr]
            [cb.payload.JobStatus.ErrorMsg for cb in jobs],  # type: ignore[union-attr]
            [cb.analysis.ID if cb.analysis is not None else None for cb in jobs],
            [cb.received_at for cb in jobs],
            [cb.id for cb in jobs],
        )
    rows["jobs"] = len(plan.jobs)

    rows["callbacks"] = await _copy(
        conn,
        "callbacks",
        CALLBACK_COLUMNS,
        [
            (
                cb.id, cb.received_at, cb.content_type, cb.body_sha256, cb.body,
                plan.outcomes[cb.id].value,
                cb.analysis.ID if cb.analysis is not None else None,
                cb.job_id,
                cb.trace_id,
            )
            for cb in plan.ledger
        ],
    )
    if plan.reruns:
        await conn.execute(
            f"""
            UPDATE {SCHEMA}.callbacks AS c
            SET outcome = u.outcome, processed_at = now(), analysis_id = u.analysis_id, job_id = u.job_id
            FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[]) AS u (id, outcome, analysis_id, job_id)
            WHERE c.id = u.id
            """,
            [cb.id for cb in plan.reruns],
            [plan.outcomes[cb.id].value for cb in plan.reruns],
            [cb.analysis.ID if cb.analysis is not None else None for cb in plan.reruns],
            [cb.job_id for cb in plan.reruns],
        )
        rows["callbacks"] += len(plan.reruns)
    return rows
