"""The raw ceiling of the worker: the very rows it writes, already decoded, COPYed and nothing else.

Bodies are decoded and turned into COPY records before the clock starts; what
is timed is one transaction per batch (same batch size as the worker) with one
``copy_records_to_table`` per table (the ledger row with its body, the job, the
analysis, the six child tables) and the commit. No advisory locks, no reads of
what is stored, no decisions, no AMQP, no acks, no logging.
"""

from __future__ import annotations

import datetime
import hashlib
import time
import uuid

import asyncpg

from schemas.decoding import decode_payload
from schemas.message import Callback
from store.rows import ANALYSIS_COLUMNS, CALLBACK_COLUMNS, CHILD_COLUMNS, analysis_row, child_rows

JOB_COLUMNS = ["job_id", "success", "error_msg", "analysis_id", "received_at", "callback_id"]


def records(bodies: list[tuple[bytes, str]]) -> list[dict[str, list[tuple]]]:
    """One dict of table -> records per callback (the rows the worker writes for it)."""
    out = []
    now = datetime.datetime.now(datetime.UTC)
    for body, content_type in bodies:
        payload = decode_payload(body, content_type)
        cb = Callback(uuid.uuid4(), now, content_type, hashlib.sha256(body).hexdigest(), body, payload)
        tables: dict[str, list[tuple]] = {
            "callbacks": [(cb.id, cb.received_at, cb.content_type, cb.body_sha256, cb.body, "ingested",
                           cb.analysis.ID, cb.job_id, cb.trace_id)],
            "jobs": [(cb.job_id, payload.JobStatus.Success, payload.JobStatus.ErrorMsg,
                      cb.analysis.ID, cb.received_at, cb.id)],
            "analyses": [analysis_row(cb)],
        }
        for table, (attribute, _) in CHILD_COLUMNS.items():
            tables[table] = child_rows(cb.analysis, attribute)  # type: ignore[arg-type]
        out.append(tables)
    return out


COLUMNS = {"callbacks": CALLBACK_COLUMNS, "jobs": JOB_COLUMNS, "analyses": ANALYSIS_COLUMNS,
           **{table: columns for table, (_, columns) in CHILD_COLUMNS.items()}}


def _uuids_as_str(rows: list[tuple]) -> list[tuple]:
    return [tuple(str(v) if isinstance(v, uuid.UUID) else v for v in row) for row in rows]


async def run(database_url: str, bodies: list[tuple[bytes, str]], batch_size: int, *, uuid_as_str: bool = False) -> dict:
    """``uuid_as_str``: UUIDs handed to asyncpg as text (parsed in C) instead of uuid.UUID (``.bytes`` in Python)."""
    prepared = records(bodies)
    if uuid_as_str:
        prepared = [{table: _uuids_as_str(rows) for table, rows in cb.items()} for cb in prepared]
    batches = []
    for i in range(0, len(prepared), batch_size):
        chunk = prepared[i:i + batch_size]
        batches.append({table: [r for cb in chunk for r in cb[table]] for table in COLUMNS})
    rows = sum(len(r) for b in batches for r in b.values())
    conn = await asyncpg.connect(database_url)
    try:
        started = time.perf_counter()
        for batch in batches:
            async with conn.transaction():
                for table, columns in COLUMNS.items():
                    if batch[table]:
                        await conn.copy_records_to_table(table, schema_name="flowscribe", columns=columns,
                                                         records=batch[table])
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return {"payloads": len(bodies), "rows": rows, "seconds": round(elapsed, 3),
            "payloads_per_s": len(bodies) / elapsed, "rows_per_s": rows / elapsed}
