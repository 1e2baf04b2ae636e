"""`prune`: old archived bodies (and, asked, ledger rows) go; digests, stored rows and recent callbacks stay."""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import sys
import uuid

import asyncpg

from tests.support import eventually, service_env
from tests.test_ops import ops, store, table_rows
from tests.test_pipeline import T0, publish_as_gateway, versioned

NOW = datetime.datetime.now(datetime.UTC)
OLD = T0 - datetime.timedelta(days=400)  # well past --older-than 90d


async def _history(db: asyncpg.Pool) -> dict[str, str]:
    """Old callbacks of every outcome, and recent ones: name -> callback id."""
    analysis = str(uuid.uuid4())
    ids = {
        "old_v1": await store(db, versioned(1, analysis_id=analysis), OLD),
        "old_v2": await store(db, versioned(2, analysis_id=analysis), OLD + datetime.timedelta(seconds=1)),
        "old_retry": await store(db, versioned(2, analysis_id=analysis), OLD + datetime.timedelta(seconds=2)),
        "old_other": await store(db, versioned(3, analysis_id=str(uuid.uuid4())), OLD + datetime.timedelta(seconds=3)),
        "new": await store(db, versioned(4, analysis_id=str(uuid.uuid4())), NOW - datetime.timedelta(days=1)),
    }
    outcomes = {r["id"]: r["outcome"] for r in await db.fetch("SELECT id::text, outcome FROM flowscribe.callbacks")}
    assert [outcomes[ids[k]] for k in ("old_v1", "old_v2", "old_retry", "old_other", "new")] == [
        "ingested", "ingested", "duplicate", "ingested", "ingested"]  # v1 was stored until v2 came
    return ids


async def _ledger(db: asyncpg.Pool) -> dict[str, asyncpg.Record]:
    return {r["id"]: r for r in await db.fetch(
        "SELECT id::text, body IS NOT NULL AS has_body, body_sha256, outcome FROM flowscribe.callbacks")}


async def _stored_bytes(db: asyncpg.Pool, ids: list[str]) -> int:
    return await db.fetchval("SELECT sum(pg_column_size(body)) FROM flowscribe.callbacks WHERE id = ANY($1::uuid[])",
                             ids)


class TestBodies:
    async def test_dry_run_says_what_and_how_many_bytes_and_changes_nothing(self, settings, db):
        ids = await _history(db)
        old = [ids[k] for k in ("old_v1", "old_v2", "old_retry", "old_other")]
        before = await _ledger(db)
        run = await ops(settings, "prune", "--older-than", "90d", "--dry-run", "--json")
        assert run.code == 0, run.err
        summary = json.loads(run.out)
        assert summary["dry_run"] is True and summary["mode"] == "bodies"
        assert summary["bodies_pruned"] == 4 and summary["ledger_rows_deleted"] == 0
        assert summary["bytes"] == await _stored_bytes(db, old) > 0
        assert summary["bodies_by_outcome"] == {"duplicate": 1, "ingested": 3}
        assert summary["oldest_received_at"] == OLD.isoformat()
        assert await _ledger(db) == before
        text = await ops(settings, "prune", "--older-than", "90d", "--dry-run")
        assert "would remove 4 archived bodies" in text.out and "nothing was changed" in text.out

    async def test_removes_old_bodies_keeps_digests_and_recent_ones(self, settings, db):
        ids = await _history(db)
        before = await _ledger(db)
        old = [ids[k] for k in ("old_v1", "old_v2", "old_retry", "old_other")]
        expected_bytes = await _stored_bytes(db, old)
        run = await ops(settings, "prune", "--older-than", "90d", "--batch-size", "3", "--json")
        assert run.code == 0, run.err
        summary = json.loads(run.out)
        assert (summary["bodies_pruned"], summary["bytes"], summary["batches"]) == (4, expected_bytes, 2)
        assert summary["complete"] is True and summary["no_longer_reprocessable"] == 4
        assert "can no longer be reprocessed" in run.err
        after = await _ledger(db)
        assert set(after) == set(before)  # no ledger row goes without --ledger
        assert {k for k, r in after.items() if r["has_body"]} == {ids["new"]}
        assert all(after[k]["body_sha256"] == before[k]["body_sha256"] for k in after)
        assert all(after[k]["outcome"] == before[k]["outcome"] for k in after)
        again = json.loads((await ops(settings, "prune", "--older-than", "90d", "--json")).out)
        assert again["bodies_pruned"] == 0  # idempotent

    async def test_a_vendor_retry_of_a_pruned_body_is_still_a_duplicate(self, settings, db, broker, start_worker):
        ids = await _history(db)
        assert (await ops(settings, "prune", "--older-than", "90d")).code == 0
        body = await db.fetchval("SELECT body FROM flowscribe.callbacks WHERE id = $1", uuid.UUID(ids["old_other"]))
        assert body is None
        retry = await publish_as_gateway(broker, versioned(3, analysis_id=await db.fetchval(
            "SELECT analysis_id::text FROM flowscribe.callbacks WHERE id = $1", uuid.UUID(ids["old_other"]))),
            received_at=NOW)
        start_worker()

        async def outcome() -> str | None:
            return await db.fetchval("SELECT outcome FROM flowscribe.callbacks WHERE id = $1", uuid.UUID(retry))

        assert await eventually(outcome, what="the retry processed") == "duplicate"

    async def test_reprocess_reports_pruned_callbacks_as_not_reprocessable(self, settings, db, broker):
        ids = await _history(db)
        assert (await ops(settings, "prune", "--older-than", "90d")).code == 0
        dry = await ops(settings, "reprocess", "--all", "--dry-run")
        assert dry.code == 0, dry.err
        rows = table_rows(dry.out)
        assert "not reprocessable: body pruned" in rows[ids["old_v2"]]
        assert "not reprocessable" not in rows[ids["new"]]
        run = await ops(settings, "reprocess", "--all")
        assert run.code == 0, run.err
        assert "published 1 for reprocessing, failed 0, pruned 4" in run.out
        assert "4 not reprocessable" in run.err
        queue = await broker.declare_queue("flowscribe.callbacks", passive=True)
        assert queue.declaration_result.message_count == 1

    async def test_refuses_a_future_cut_off(self, settings, db):
        future = (NOW + datetime.timedelta(days=1)).isoformat()
        assert (await ops(settings, "prune", "--older-than", future)).code == 2


class TestLedger:
    async def test_deletes_old_rows_but_those_stored_rows_point_to(self, settings, db):
        ids = await _history(db)
        dry = json.loads((await ops(settings, "prune", "--older-than", "90d", "--ledger", "--dry-run", "--json")).out)
        assert (dry["ledger_rows_deleted"], dry["bodies_pruned"]) == (2, 2)
        run = await ops(settings, "prune", "--older-than", "90d", "--ledger", "--batch-size", "2", "--json")
        assert run.code == 0, run.err
        summary = json.loads(run.out)
        assert (summary["ledger_rows_deleted"], summary["bodies_pruned"]) == (2, 2)
        after = await _ledger(db)
        # The replaced version and the vendor retry go; the stored versions' rows stay, bodies removed.
        assert set(after) == {ids["old_v2"], ids["old_other"], ids["new"]}
        assert [after[ids[k]]["has_body"] for k in ("old_v2", "old_other", "new")] == [False, False, True]
        stored = {r[0] for r in await db.fetch("SELECT callback_id::text FROM flowscribe.analyses")}
        assert stored <= set(after)  # every analysis still names an existing ledger row
        assert await db.fetchval("SELECT count(*) FROM flowscribe.sentences") == 2 + 3 + 4


class TestSignal:
    async def test_sigterm_stops_cleanly_between_batches(self, settings, db):
        await db.execute("""
            INSERT INTO flowscribe.callbacks (id, received_at, content_type, body_sha256, body, outcome)
            SELECT gen_random_uuid(), $1::timestamptz + i * interval '1 second', 'application/json',
                   md5(i::text), convert_to(repeat('x', 100) || i, 'UTF8'), 'job_failed'
            FROM generate_series(1, 2000) AS i
        """, OLD)
        process = await asyncio.create_subprocess_exec(
            # Long pauses between small batches: the signal comes during a pause or a batch.
            sys.executable, "-m", "flowscribe_ingest.cli", "prune", "--older-than", "90d", "--batch-size", "10",
            "--duty-cycle", "0.05", "--json", env=service_env(settings),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            first = await asyncio.wait_for(process.stderr.readline(), 60)
            assert first.startswith(b"pruning: "), first
            process.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
        assert process.returncode == 0
        summary = json.loads(out)
        assert summary["complete"] is False and 0 < summary["bodies_pruned"] < 2000
        pruned = await db.fetchval("SELECT count(*) FROM flowscribe.callbacks WHERE body IS NULL")
        assert pruned == summary["bodies_pruned"]  # every batch committed whole, and reported
