"""The operator's tools: dead letters read without change, replayed and purged by choice,
moved between environments, and stored callbacks reprocessed without doubling anything."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import functools
import hashlib
import io
import json
import os
import re
import signal
import sys
import uuid

import aio_pika
import asyncpg

from flowscribe_ingest.cli import build_parser
from ops import dead_letters
from ops.commands import execute
from ops.render import Console
from schemas import topology
from schemas.decoding import decode_payload
from schemas.message import Callback
from store.batch import write_batch
from store.decision import Stored, decide
from store.outcomes import Outcome
from tests.support import XML_SAMPLE, eventually
from tests.test_pipeline import T0, publish_as_gateway, versioned

BROKEN_JSON = b'{"Success": tru'
FAILED_JOB = json.dumps({
    "Success": False,
    "JobStatus": {"JobID": "0b7c4a52-5a47-4bfb-9a37-3bb0e0f0a001", "Success": False, "ErrorMsg": "no audio"},
    "ConversationAnalysisModel": None,
}).encode()


@dataclasses.dataclass
class Run:
    code: int
    out: str
    err: str
    raw: bytes


async def ops(settings, *argv: str, interactive: bool = False, answer: str = "") -> Run:
    """Run `flowscribe-ingest ARGV...` in-process, through the real parser."""
    out, err, raw = io.StringIO(), io.StringIO(), io.BytesIO()
    console = Console(out, err, raw, interactive=interactive, live=False, read_answer=lambda: answer)
    code = await execute(settings, build_parser().parse_args(list(argv)), console)
    return Run(code, out.getvalue(), err.getvalue(), raw.getvalue())


def letter(
    body: bytes, *, message_id: str | None = None, error: str = "PayloadDecodeError: invalid JSON payload",
    stage: str = "decode", received_at: datetime.datetime = T0, at: datetime.datetime | None = None,
    content_type: str = "application/json", headers: dict | None = None,
) -> aio_pika.Message:
    """A message as the worker dead-letters it (the headers of worker.moving.dead_letter_copy)."""
    return aio_pika.Message(
        body, message_id=message_id or str(uuid.uuid4()), content_type=content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={
            topology.HEADER_RECEIVED_AT: received_at.isoformat(),
            topology.HEADER_BODY_SHA256: hashlib.sha256(body).hexdigest(),
            topology.HEADER_ERROR: error,
            topology.HEADER_ERROR_CLASS: error.partition(":")[0],
            topology.HEADER_ERROR_STAGE: stage,
            topology.HEADER_DEAD_LETTERED_AT: (at or datetime.datetime.now(datetime.UTC)).isoformat(),
            topology.HEADER_DEAD_LETTERED_BY: "worker@test",
            **(headers or {}),
        },
    )


async def put(broker, message: aio_pika.Message) -> str:
    exchange = await broker.get_exchange(topology.DEAD_LETTER_EXCHANGE)
    await exchange.publish(message, routing_key=topology.DEAD_LETTER_ROUTING_KEY)  # confirmed
    assert message.message_id is not None
    return message.message_id


async def dead_letter(broker, body: bytes, **options) -> str:
    """Put a message in the dead-letter queue as the worker does; its id."""
    return await put(broker, letter(body, **options))


async def drain(broker, name: str = topology.DEAD_LETTER_QUEUE) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message out of a queue, in order (the test owns the vhost)."""
    queue = await broker.get_queue(name)
    taken = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        taken.append(message)
    return taken


def essence(message) -> tuple:
    """What must survive a read: id, body, properties, headers (but the broker's delivery counter)."""
    headers = {k: v for k, v in (message.headers or {}).items() if k != "x-delivery-count"}
    return (message.message_id, message.body, message.content_type, int(message.delivery_mode), headers)


async def depth(broker, name: str) -> int:
    queue = await broker.declare_queue(name, passive=True)
    return queue.declaration_result.message_count


async def store(db: asyncpg.Pool, body: bytes, received_at: datetime.datetime, message_id: str | None = None) -> str:
    """Land one callback directly with the worker's store (no broker round trip)."""
    message_id = message_id or str(uuid.uuid4())
    callback = Callback(uuid.UUID(message_id), received_at, "application/json",
                        hashlib.sha256(body).hexdigest(), body, decode_payload(body, "application/json"))
    async with db.acquire() as conn:
        await write_batch(conn, [callback])
    return message_id


def table_rows(out: str) -> dict[str, str]:
    """Lines of a printed table, by the message id they contain."""
    rows = {}
    for line in out.splitlines():
        for word in line.split():
            try:
                rows[str(uuid.UUID(word))] = line
            except ValueError:
                continue
            break
    return rows


def last_column(line: str) -> str:
    return re.split(r"\s{2,}", line.strip())[-1]


def env(settings) -> dict[str, str]:
    return {**os.environ, "FLOWSCRIBE_AMQP_URL": settings.amqp_url,
            "FLOWSCRIBE_DATABASE_URL": settings.database_url, "FLOWSCRIBE_LOG_FORMAT": "json"}


class TestList:
    """`dlq list` shows every dead letter and why, and leaves the queue exactly as it was."""

    async def test_reading_changes_nothing(self, settings, broker):
        published = [
            letter(BROKEN_JSON),
            letter(versioned(1, analysis_id=str(uuid.uuid4())),
                   error="CheckViolationError: new row violates check constraint", stage="database",
                   headers={"nested": {"at": T0, "raw": bytearray(b"\x00\xff"), "n": [1, "a"]}}),
            letter(XML_SAMPLE, content_type="application/xml"),
            letter(b"\xff\xfe binary", content_type="application/octet-stream"),
            # A broker-side dead letter: no x-flowscribe-error, an x-death header instead.
            aio_pika.Message(
                b"{}", message_id=str(uuid.uuid4()), content_type="application/json", delivery_mode=2,
                headers={"x-death": [{"count": 1, "reason": "delivery_limit", "queue": topology.CALLBACK_QUEUE,
                                      "time": T0, "exchange": topology.CALLBACK_EXCHANGE,
                                      "routing-keys": [topology.CALLBACK_ROUTING_KEY]}]},
            ),
        ]
        ids = [await put(broker, message) for message in published]
        broker_side = ids[-1]

        listed = await ops(settings, "dlq", "list")
        assert listed.code == 0, listed.err
        rows = table_rows(listed.out)
        assert list(rows) == ids  # queue order
        assert "PayloadDecodeError: invalid JSON payload" in rows[ids[0]]
        assert "CheckViolationError" in rows[ids[1]]
        assert "c655c2ed-9abb-49e0-a8ce-399a897ca5d3" in rows[ids[2]]  # the XML sample's analysis id
        assert "delivery_limit (broker, from flowscribe.callbacks)" in rows[broker_side]
        assert f" {topology.DELIVERY_LIMIT + 1} " in rows[broker_side]  # attempts the broker allowed
        assert "5 shown, 5 in flowscribe.dead-letter" in listed.out
        # A partial read and a filtered one return what they held, too.
        assert (await ops(settings, "dlq", "list", "--json", "--limit", "2")).code == 0
        assert (await ops(settings, "dlq", "list", "--reason", "check")).code == 0

        # Same messages (ids, bodies, properties, headers), in the same order, as many as published.
        assert [essence(m) for m in await drain(broker)] == [essence(m) for m in published]

    async def test_order_survives_partial_reads_and_replays_of_many(self, settings, broker):
        """Also beyond 32 held messages, where the broker's bookkeeping of them changes (see ops.dead_letters)."""
        ids = [await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4()))) for _ in range(40)]
        assert (await ops(settings, "dlq", "list", "--limit", "3")).code == 0
        chosen = ids[::5]
        assert (await ops(settings, "dlq", "replay", *chosen)).code == 0
        assert [m.message_id for m in await drain(broker)] == [i for i in ids if i not in chosen]
        assert [m.message_id for m in await drain(broker, topology.CALLBACK_QUEUE)] == chosen

    async def test_one_reader_at_a_time(self, settings, broker, monkeypatch):
        await dead_letter(broker, BROKEN_JSON)
        monkeypatch.setattr(dead_letters, "LOCK_WAIT", 0.3)
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            async with dead_letters.DeadLetterQueue(connection):  # another command, reading
                busy = await ops(settings, "dlq", "list")
            assert busy.code == 1 and "another flowscribe-ingest dlq command is working" in busy.err
        finally:
            await connection.close()
        assert (await ops(settings, "dlq", "list")).code == 0
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1

    async def test_filters_and_json(self, settings, broker):
        now = datetime.datetime.now(datetime.UTC)
        old = await dead_letter(broker, BROKEN_JSON, at=now - datetime.timedelta(days=3))
        new = [await dead_letter(broker, BROKEN_JSON, error="InvalidMessage: message has neither", stage="validate")
               for _ in range(3)]
        run = await ops(settings, "dlq", "list", "--json", "--since", "1d")
        assert [json.loads(line)["message_id"] for line in run.out.splitlines()] == new
        run = await ops(settings, "dlq", "list", "--json", "--until", (now - datetime.timedelta(days=1)).isoformat())
        [row] = [json.loads(line) for line in run.out.splitlines()]
        assert row["message_id"] == old
        assert row["stage"] == "decode" and row["attempts"] == 1 and row["size"] == len(BROKEN_JSON)
        assert row["received_at"] == T0.isoformat() and row["analysis_id"] is None
        run = await ops(settings, "dlq", "list", "--json", "--reason", "INVALIDMESSAGE", "--limit", "2")
        assert [json.loads(line)["message_id"] for line in run.out.splitlines()] == new[:2]
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 4

    async def test_console_script_lists_json(self, settings, broker):
        message_id = await dead_letter(broker, BROKEN_JSON)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowscribe_ingest.cli", "dlq", "list", "--json", env=env(settings),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        [row] = [json.loads(line) for line in out.decode().splitlines()]
        assert row["message_id"] == message_id and row["reason"].startswith("PayloadDecodeError")
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1

    async def test_unreachable_broker_says_what_to_do(self, settings):
        unreachable = dataclasses.replace(settings, amqp_url="amqp://guest:hunter2@127.0.0.1:1/")
        run = await ops(unreachable, "dlq", "list")
        assert run.code == 1
        assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/" in run.err
        assert "set FLOWSCRIBE_AMQP_URL" in run.err and "hunter2" not in run.err


class TestShow:
    """`dlq show` prints why, every property and header, and the body readable or exact."""

    async def test_show_pretty_raw_and_unknown(self, settings, broker):
        body = versioned(1, analysis_id=str(uuid.uuid4()))
        message_id = await dead_letter(broker, body, error="CheckViolationError: refused", stage="database")
        shown = await ops(settings, "dlq", "show", message_id)
        assert shown.code == 0, shown.err
        assert "reason          CheckViolationError: refused" in shown.out
        assert "decodes now     yes" in shown.out
        assert f"{topology.HEADER_RECEIVED_AT}: {T0.isoformat()}" in shown.out
        assert '\n  "ConversationAnalysisModel": {\n' in shown.out  # indented JSON
        raw = await ops(settings, "dlq", "show", message_id, "--raw")
        assert raw.raw == body and raw.out == ""
        missing = await ops(settings, "dlq", "show", str(uuid.uuid4()))
        assert missing.code == 1 and "no dead letter with message id" in missing.err
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1


class TestReplay:
    """`dlq replay` sends chosen dead letters through the normal path; none lost, none stored twice."""

    async def test_a_fixed_poison_message_lands_exactly_once(self, settings, broker, db, start_worker):
        body = versioned(2, analysis_id=str(uuid.uuid4()))
        message_id = await dead_letter(broker, body, error="PayloadDecodeError: a bug since fixed")
        run = await ops(settings, "dlq", "replay", message_id)
        assert run.code == 0, run.err
        assert "replayed 1, skipped 0, failed 0" in run.out
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 0
        [copy] = await drain(broker, topology.CALLBACK_QUEUE)
        # The original id and receive time (exactly-once holds); the reasons gone; the replay counted.
        assert copy.message_id == message_id and copy.body == body
        assert copy.headers[topology.HEADER_RECEIVED_AT] == T0.isoformat()
        assert copy.headers[topology.HEADER_REPLAYS] == 1
        assert not any(k.startswith(("x-flowscribe-error", "x-flowscribe-dead-lettered"))
                       for k in copy.headers)
        assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT

        # Twice in the main queue (a replay repeated after a crash): stored once.
        await dead_letter(broker, body, message_id=message_id)
        assert (await ops(settings, "dlq", "replay", message_id)).code == 0
        await publish_as_gateway(broker, body, received_at=T0, message_id=message_id)
        worker = start_worker()
        await eventually(lambda: _taken(broker), what="the worker to take both copies")
        stopped = await worker.stop()
        assert stopped.outcomes["ingested"] == 1 and stopped.outcomes["redelivered"] == 1
        assert await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == 1
        assert await db.fetchval("SELECT outcome FROM flowscribe.callbacks WHERE id = $1",
                                 uuid.UUID(message_id)) == "ingested"
        assert await db.fetchval("SELECT count(*) FROM flowscribe.sentences") == 2
        again = await ops(settings, "dlq", "replay", message_id)
        assert again.code == 1 and f"not found: {message_id}" in again.err

    async def test_by_reason_and_all_with_limit_keep_the_rest_in_order(self, settings, broker):
        good = [versioned(1, analysis_id=str(uuid.uuid4())) for _ in range(5)]
        ids = [await dead_letter(broker, body, error=error, stage="database")
               for body, error in zip(good, ["CheckViolationError: a", "DeadlockDetectedError: b",
                                             "CheckViolationError: c", "DeadlockDetectedError: d",
                                             "DeadlockDetectedError: e"], strict=True)]
        run = await ops(settings, "dlq", "replay", "--reason", "checkviolation")
        assert run.code == 0 and "replayed 2," in run.out
        run = await ops(settings, "dlq", "replay", "--all", "--limit", "2")
        assert run.code == 0 and "replayed 2," in run.out
        assert [m.message_id for m in await drain(broker, topology.CALLBACK_QUEUE)] == [ids[0], ids[2], ids[1], ids[3]]
        assert [m.message_id for m in await drain(broker)] == [ids[4]]

    async def test_still_failing_messages_stay_unless_forced(self, settings, broker):
        poison = await dead_letter(broker, BROKEN_JSON)
        run = await ops(settings, "dlq", "replay", "--all")
        assert run.code == 0 and "replayed 0, skipped 1, failed 0" in run.out
        assert f"skipped {poison}: still fails: PayloadDecodeError" in run.err
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1
        run = await ops(settings, "dlq", "replay", "--all", "--force")
        assert "replayed 1," in run.out
        assert await depth(broker, topology.CALLBACK_QUEUE) == 1

    async def test_a_copy_the_broker_did_not_confirm_stays_a_dead_letter(self, settings, broker):
        message_id = await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4())))
        impatient = dataclasses.replace(settings, publish_timeout=1e-6)  # no confirm can arrive in time
        run = await ops(impatient, "dlq", "replay", message_id)
        assert run.code == 1 and "replayed 0, skipped 0, failed 1" in run.out
        assert f"failed {message_id}: the broker did not confirm" in run.err
        # Still a dead letter (the copy may have arrived too: the worker would absorb it as a redelivery).
        assert [m.message_id for m in await drain(broker)] == [message_id]

    async def test_a_replay_without_a_choice_is_refused(self, settings, broker):
        await dead_letter(broker, BROKEN_JSON)
        run = await ops(settings, "dlq", "replay")
        assert run.code == 2 and "say which dead letters to replay" in run.err
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1

    async def test_dry_run_predicts_and_changes_nothing(self, settings, broker, db, start_worker):
        analysis = str(uuid.uuid4())
        stored_v2 = await store(db, versioned(2, analysis_id=analysis), T0 + datetime.timedelta(seconds=2))
        letters = {
            "new analysis": await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4()))),
            "replace": await dead_letter(broker, versioned(3, analysis_id=analysis),
                                         received_at=T0 + datetime.timedelta(seconds=3)),
            "superseded": await dead_letter(broker, versioned(1, analysis_id=analysis), received_at=T0),
            "duplicate": await dead_letter(broker, versioned(2, analysis_id=analysis),
                                           received_at=T0 + datetime.timedelta(seconds=9)),
            "redelivery-noop": await dead_letter(broker, versioned(2, analysis_id=analysis), message_id=stored_v2,
                                                 received_at=T0 + datetime.timedelta(seconds=2)),
            "job_failed": await dead_letter(broker, FAILED_JOB),
            "still fails": await dead_letter(broker, BROKEN_JSON),
        }
        before = await db.fetchval("SELECT count(*) FROM flowscribe.callbacks")

        run = await ops(settings, "dlq", "replay", "--all", "--dry-run")
        assert run.code == 0, run.err
        rows = table_rows(run.out)
        for effect, message_id in letters.items():
            assert last_column(rows[message_id]).startswith(effect), (effect, rows[message_id])
        assert "would replay 6" in run.out and "nothing was changed" in run.out
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 7
        assert await depth(broker, topology.CALLBACK_QUEUE) == 0
        assert await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == before

        # The prediction holds: replay for real, one message at a time, in the order listed.
        worker = start_worker(batch_size=1)
        assert (await ops(settings, "dlq", "replay", "--all")).code == 0
        await eventually(lambda: _taken(broker), what="the replayed messages to land")
        await worker.stop()
        outcomes = dict(await db.fetch("SELECT id::text, outcome FROM flowscribe.callbacks"))
        assert outcomes[letters["new analysis"]] == "ingested"
        assert outcomes[letters["replace"]] == "ingested"
        assert outcomes[letters["superseded"]] == "superseded"
        assert outcomes[letters["duplicate"]] == "duplicate"
        assert outcomes[stored_v2] == "ingested" and len(outcomes) == before + 5
        assert outcomes[letters["job_failed"]] == "job_failed"
        assert await db.fetchval("SELECT conversation_text FROM flowscribe.analyses WHERE id = $1",
                                 uuid.UUID(analysis)) == "version 3"
        assert [m.message_id for m in await drain(broker)] == [letters["still fails"]]

    async def test_kill_9_mid_replay_loses_and_doubles_nothing(self, settings, broker, db, start_worker):
        n = 40
        ids = [await dead_letter(broker, versioned(1, analysis_id=str(uuid.uuid4()))) for _ in range(n)]
        for killed_after in (10, 25):  # two interrupted runs
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "flowscribe_ingest.cli", "dlq", "replay", "--all", "--rate", "20",
                env=env(settings), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await eventually(
                    functools.partial(_depth_at_least, broker, topology.CALLBACK_QUEUE, killed_after),
                    timeout=30, what=f"{killed_after} messages replayed",
                )
            finally:
                process.send_signal(signal.SIGKILL)
                await process.wait()
            # Unacked dead letters return when the connection dies: every message is in one queue or both.
            total = await eventually(lambda: _total_at_least(broker, n), what="the killed replay's messages back")
            assert await depth(broker, topology.DEAD_LETTER_QUEUE) > 0, "killed too late to test anything"
            assert total <= n + 2  # at most the one in flight per run is in both
        finish = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowscribe_ingest.cli", "dlq", "replay", "--all", env=env(settings),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(finish.communicate(), 60)
        assert finish.returncode == 0, err.decode()
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 0
        queued = await depth(broker, topology.CALLBACK_QUEUE)
        assert n <= queued <= n + 2

        worker = start_worker()
        await eventually(lambda: _taken(broker), what="the worker to drain the queue")
        stopped = await worker.stop()
        stored = {r[0] for r in await db.fetch("SELECT id::text FROM flowscribe.callbacks")}
        assert stored == set(ids)  # all of them, each once (the id is the ledger's key)
        assert await db.fetchval("SELECT count(*) FROM flowscribe.sentences") == n
        assert stopped.outcomes["ingested"] == n
        assert stopped.outcomes["ingested"] + stopped.outcomes["redelivered"] == queued


class TestPurge:
    """`dlq purge` deletes only what was chosen, and only when told so."""

    async def test_purge_with_yes_removes_only_the_chosen(self, settings, broker):
        keep = await dead_letter(broker, BROKEN_JSON, error="PayloadDecodeError: x")
        gone = await dead_letter(broker, BROKEN_JSON, error="CheckViolationError: y", stage="database")
        keep2 = await dead_letter(broker, BROKEN_JSON, error="PayloadDecodeError: z")
        run = await ops(settings, "dlq", "purge", "--reason", "checkviolation", "--yes")
        assert run.code == 0 and "purged 1" in run.out and gone in run.out
        assert [m.message_id for m in await drain(broker)] == [keep, keep2]

    async def test_refused_without_a_terminal_or_yes_and_when_declined(self, settings, broker):
        await dead_letter(broker, BROKEN_JSON)
        refused = await ops(settings, "dlq", "purge", "--all")
        assert refused.code == 2 and "pass --yes" in refused.err
        declined = await ops(settings, "dlq", "purge", "--all", interactive=True, answer="n\n")
        assert declined.code == 1 and "nothing was purged" in declined.err
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 1
        accepted = await ops(settings, "dlq", "purge", "--all", interactive=True, answer="y\n")
        assert accepted.code == 0 and "purged 1" in accepted.out
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 0


class TestTransfer:
    """`dlq export` / `dlq import` move dead letters as NDJSON and re-create equivalent messages."""

    async def test_round_trip(self, settings, broker, tmp_path):
        typed = {"when": T0, "bytes": bytearray(b"\x00\x01\xff"), "dec": decimal.Decimal("1.25"),
                 "table": {"$datetime": "a table, not a tag"}, "list": [1, "two", None, True, {"k": T0}],
                 "big": 2**40}
        ids = [await dead_letter(broker, BROKEN_JSON, headers=typed),
               await dead_letter(broker, XML_SAMPLE, content_type="text/xml; charset=utf-8"),
               await dead_letter(broker, b"\xff\x00 binary", content_type="application/octet-stream")]
        first = tmp_path / "evidence.ndjson"
        run = await ops(settings, "dlq", "export", str(first))
        assert run.code == 0, run.err
        assert [json.loads(line)["message_id"] for line in first.read_text().splitlines()] == ids
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 3  # export alone removes nothing
        assert (await ops(settings, "dlq", "export", str(first))).code == 2  # never overwrites

        moved = tmp_path / "moved.ndjson"
        run = await ops(settings, "dlq", "export", str(moved), "--remove")
        assert run.code == 0 and _records(moved) == _records(first)
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 0
        assert not (tmp_path / "moved.ndjson.partial").exists()

        run = await ops(settings, "dlq", "import", str(moved))
        assert run.code == 0 and "imported 3" in run.out
        imported = await drain(broker)
        assert [m.message_id for m in imported] == ids
        assert imported[0].headers["when"] == T0
        assert imported[0].headers["bytes"] == bytearray(b"\x00\x01\xff")
        assert imported[0].headers["dec"] == decimal.Decimal("1.25")
        for key, value in typed.items():
            assert imported[0].headers[key] == value, key
        assert imported[1].body == XML_SAMPLE and imported[1].content_type == "text/xml; charset=utf-8"
        assert imported[2].body == b"\xff\x00 binary"
        assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in imported)
        reread = [json.loads(line) for line in first.read_text().splitlines()]
        for record, message in zip(reread, imported, strict=True):
            assert record["headers"].keys() - {"x-delivery-count"} == message.headers.keys() - {"x-delivery-count"}

    async def test_a_damaged_file_imports_nothing(self, settings, broker, tmp_path):
        await dead_letter(broker, BROKEN_JSON)
        path = tmp_path / "one.ndjson"
        assert (await ops(settings, "dlq", "export", str(path), "--remove")).code == 0
        record = json.loads(path.read_text())
        record["body_base64"] = "e30="  # "{}": no longer the exported body
        path.write_text(path.read_text() + json.dumps(record) + "\n")
        run = await ops(settings, "dlq", "import", str(path))
        assert run.code == 2 and "line 2" in run.err and "body_sha256" in run.err
        assert await depth(broker, topology.DEAD_LETTER_QUEUE) == 0


class TestReprocess:
    """`reprocess` re-derives rows from the archive: the stored version is rewritten, nothing else changes."""

    async def test_rewrites_the_stored_version_and_leaves_the_rest(self, settings, broker, db, start_worker):
        analysis = str(uuid.uuid4())
        current = await store(db, versioned(2, analysis_id=analysis), T0 + datetime.timedelta(seconds=5))
        older = await store(db, versioned(1, analysis_id=analysis), T0)
        retry = await store(db, versioned(2, analysis_id=analysis), T0 + datetime.timedelta(seconds=9))
        other = await store(db, versioned(3, analysis_id=str(uuid.uuid4())), T0)
        # What a decoder bug could have left behind:
        await db.execute("UPDATE flowscribe.sentences SET sentence = 'garbled' WHERE analysis_id = $1",
                         uuid.UUID(analysis))
        await db.execute("UPDATE flowscribe.analyses SET conversation_text = 'garbled'")
        ledger_before = await _ledger(db)
        assert [ledger_before[i][0] for i in (older, current, retry)] == ["superseded", "ingested", "duplicate"]

        dry = await ops(settings, "reprocess", "--analysis-id", analysis, "--dry-run")
        assert dry.code == 0, dry.err
        rows = table_rows(dry.out)
        assert set(rows) == {older, current, retry}
        assert last_column(rows[older]) == "superseded" and last_column(rows[current]) == "replace"
        assert last_column(rows[retry]) == "duplicate"
        assert await depth(broker, topology.CALLBACK_QUEUE) == 0 and await _ledger(db) == ledger_before

        run = await ops(settings, "reprocess", "--analysis-id", analysis)
        assert run.code == 0 and "published 3 for reprocessing, failed 0," in run.out
        start_worker()
        await eventually(lambda: _reprocessed(db, ledger_before, {older, current, retry}),
                         what="the worker to reprocess the three callbacks")
        ledger = await _ledger(db)
        assert {k: v[0] for k, v in ledger.items()} == {k: v[0] for k, v in ledger_before.items()}
        assert ledger[other] == ledger_before[other]  # not chosen, not touched
        assert await db.fetchval("SELECT conversation_text FROM flowscribe.analyses WHERE id = $1",
                                 uuid.UUID(analysis)) == "version 2"
        assert await db.fetchval("SELECT callback_id::text FROM flowscribe.analyses WHERE id = $1",
                                 uuid.UUID(analysis)) == current
        sentences = [r[0] for r in await db.fetch(
            "SELECT sentence FROM flowscribe.sentences WHERE analysis_id = $1 ORDER BY sentence", uuid.UUID(analysis))]
        assert sentences == ["v2 s0", "v2 s1"]
        assert await db.fetchval("SELECT conversation_text FROM flowscribe.analyses WHERE id <> $1",
                                 uuid.UUID(analysis)) == "garbled"

    async def test_needs_a_choice(self, settings, db):
        run = await ops(settings, "reprocess")
        assert run.code == 2 and "say which callbacks" in run.err


class TestReprocessDecision:
    """The store's pure decision for a reprocessed callback (store.batch.decide)."""

    def _callback(self, version: int, received: int, *, reprocess: bool = True, id: uuid.UUID | None = None,
                  body: bytes | None = None) -> Callback:
        body = body or versioned(version, analysis_id="6a7f0c8e-0000-4000-8000-000000000001")
        return Callback(id or uuid.uuid4(), T0 + datetime.timedelta(seconds=received), "application/json",
                        hashlib.sha256(body).hexdigest(), body, decode_payload(body, "application/json"), reprocess)

    def _stored(self, *entries: tuple[Callback, str], version: Callback | None = None) -> Stored:
        versions: dict[uuid.UUID, tuple[object, uuid.UUID]] = {version.analysis.ID: version.version} if version else {}
        return Stored({cb.id: outcome for cb, outcome in entries}, {cb.body_sha256 for cb, _ in entries}, versions)

    def test_the_stored_version_is_rewritten_in_place(self):
        cb = self._callback(2, 5)
        plan = decide([cb], self._stored((cb, "ingested"), version=cb))
        assert plan.outcomes[cb.id] is Outcome.INGESTED
        assert plan.reruns == [cb] and plan.ledger == [] and list(plan.winners.values()) == [cb]

    def test_an_older_version_is_superseded_whatever_it_was_in_its_day(self):
        old, new = self._callback(1, 1), self._callback(2, 5)
        for then in ("superseded", "ingested"):
            plan = decide([old], self._stored((old, then), (new, "ingested"), version=new))
            assert plan.outcomes[old.id] is Outcome.SUPERSEDED and plan.winners == {} and plan.reruns == [old]

    def test_a_duplicate_stays_a_duplicate_and_the_original_is_not_one(self):
        original = self._callback(2, 5)
        retry = self._callback(2, 9, body=original.body)
        stored = self._stored((original, "ingested"), (retry, "duplicate"), version=original)
        assert decide([retry], stored).outcomes[retry.id] is Outcome.DUPLICATE
        assert decide([original], stored).outcomes[original.id] is Outcome.INGESTED

    def test_a_failed_job_re_evaluates_its_job(self):
        cb = self._callback(0, 1, body=FAILED_JOB)
        plan = decide([cb], self._stored((cb, "job_failed")))
        assert plan.outcomes[cb.id] is Outcome.JOB_FAILED and list(plan.jobs.values()) == [cb]

    def test_without_the_flag_a_stored_id_is_still_a_redelivery(self):
        cb = self._callback(2, 5, reprocess=False)
        plan = decide([cb], self._stored((cb, "ingested"), version=cb))
        assert plan.outcomes[cb.id] is Outcome.REDELIVERED and plan.reruns == [] and plan.ledger == []

    def test_the_flag_on_an_unknown_id_is_a_normal_first_delivery(self):
        cb = self._callback(2, 5)
        plan = decide([cb], self._stored())
        assert plan.outcomes[cb.id] is Outcome.INGESTED and plan.ledger == [cb] and plan.reruns == []


def _records(path) -> list[dict]:
    """An export file's records, without the broker's delivery counter (each read bumps it)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["headers"].pop("x-delivery-count", None)
    return records


async def _ledger(db: asyncpg.Pool) -> dict[str, tuple[str, datetime.datetime]]:
    rows = await db.fetch("SELECT id::text, outcome, processed_at FROM flowscribe.callbacks")
    return {r[0]: (r[1], r[2]) for r in rows}


async def _reprocessed(db: asyncpg.Pool, before: dict, ids: set[str]) -> bool:
    now = await _ledger(db)
    return all(now[i][1] > before[i][1] for i in ids)


async def _taken(broker) -> bool:
    """The worker consumes and holds every queued message (stopping it then lands them)."""
    queue = await broker.declare_queue(topology.CALLBACK_QUEUE, passive=True)
    result = queue.declaration_result
    return result.message_count == 0 and result.consumer_count > 0


async def _depth_at_least(broker, name: str, n: int) -> bool:
    return await depth(broker, name) >= n


async def _total_at_least(broker, n: int) -> int | None:
    total = await depth(broker, topology.DEAD_LETTER_QUEUE) + await depth(broker, topology.CALLBACK_QUEUE)
    return total if total >= n else None
