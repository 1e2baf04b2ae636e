"""Schema drift: fields and objects the Structs do not know are found, recorded, counted and shown."""

from __future__ import annotations

import datetime
import json
import urllib.parse
import uuid

import asyncpg

from runtime.metrics import new_registry
from schemas.decoding import decode_payload
from schemas.drift import MAX_NAME, MAX_PER_BODY, known_fields, unknown_fields
from schemas.payload import COMMON_NAMESPACE as COMMON
from schemas.payload import MODELS_NAMESPACE as MODELS
from tests.support import JSON_SAMPLE, XML_SAMPLE, TcpProxy, eventually
from tests.test_ops import ops
from tests.test_pipeline import post
from worker.drift_log import MAX_LABELLED, OTHER, DriftLog


def drifted_json() -> bytes:
    """The vendor's sample with a new scoring field, a new nested object and a new top-level field."""
    sample = json.loads(JSON_SAMPLE)
    model = sample["ConversationAnalysisModel"]
    model["ConversationSentenceScoring"][0]["Score_Brand"] = 4.5
    model["ConversationSummaries"] = [{"ID": str(uuid.uuid4()), "Summary": "asked about a refund"}]
    sample["ApiVersion"] = "2.1"
    return json.dumps(sample).encode()


def drifted_xml() -> bytes:
    """The XML sample with a new field in a sentence and a new object in the analysis."""
    body = XML_SAMPLE.replace(b"<d2p1:ExtraInfo>", b"<d2p1:Pitch>220.5</d2p1:Pitch><d2p1:ExtraInfo>", 1)
    assert body != XML_SAMPLE
    return body.replace(
        b"</ConversationAnalysisModel>",
        b"<d2p1:CallMetadata><d2p1:Queue>billing</d2p1:Queue></d2p1:CallMetadata></ConversationAnalysisModel>",
    )


class TestDetection:
    """schemas.drift reads a body as the decoders do and names what the Structs lack."""

    def test_the_vendor_samples_have_no_drift(self):
        assert unknown_fields(JSON_SAMPLE, "application/json") == {}
        assert unknown_fields(XML_SAMPLE, "text/xml; charset=utf-8") == {}

    def test_json_fields_and_objects_at_every_level(self):
        assert unknown_fields(drifted_json(), "application/json") == {
            ("ConversationSentenceScoring", "Score_Brand"): "field",
            ("ConversationAnalysisModel", "ConversationSummaries"): "object",
            ("Payload", "ApiVersion"): "field",
        }

    def test_xml_fields_and_objects_by_local_name(self):
        assert unknown_fields(drifted_xml(), "application/xml") == {
            ("ConversationSentences", "Pitch"): "field",
            ("ConversationAnalysisModel", "CallMetadata"): "object",
        }

    def test_xml_elements_the_decoder_ignores_are_drift(self):
        """The decoder reads a field only in its contract's namespace: a known local name in another
        namespace, or none, is an unknown element to it, so drift names it, with its namespace."""
        body = XML_SAMPLE.replace(
            b"<d2p1:ExtraInfo>",
            b'<e:ExtraInfo xmlns:e="urn:evil">EVIL</e:ExtraInfo><ExtraInfo xmlns="">bare</ExtraInfo>'
            b"<ExtraInfo>in the Models namespace</ExtraInfo><d2p1:ExtraInfo>", 1,
        ).replace(b"</JobStatus>", b'<c:JobID xmlns:c="%s">5</c:JobID></JobStatus>' % COMMON.encode(), 1)
        assert decode_payload(body, "application/xml") == decode_payload(XML_SAMPLE, "application/xml")
        assert unknown_fields(body, "application/xml") == {
            ("ConversationSentences", "{urn:evil}ExtraInfo"): "field",
            ("ConversationSentences", "{}ExtraInfo"): "field",
            ("ConversationSentences", f"{{{MODELS}}}ExtraInfo"): "field",
            ("JobStatus", f"{{{COMMON}}}JobID"): "field",
        }

    def test_xml_a_known_name_in_another_namespace_is_unknown_as_the_decoder_skips_it(self):
        foreign = b'<x:ExtraInfo xmlns:x="urn:elsewhere">1</x:ExtraInfo>'
        body = XML_SAMPLE.replace(b"<d2p1:ExtraInfo>", foreign + b"<d2p1:ExtraInfo>", 1)
        found = unknown_fields(body, "application/xml")
        assert found == {("ConversationSentences", "{urn:elsewhere}ExtraInfo"): "field"}

    def test_names_from_the_body_are_escaped_bounded_and_few(self):
        sample = json.loads(JSON_SAMPLE)
        sample["JobStatus"]["Evil\x1b[31m\u0000"] = 1
        sample["JobStatus"]["x" * 1000] = 1
        names = [field for _, field in unknown_fields(json.dumps(sample).encode(), "application/json")]
        assert names[0] == "Evil\\x1b[31m\\x00" or names[1] == "Evil\\x1b[31m\\x00"
        assert all(name.isprintable() and len(name) <= MAX_NAME for name in names)
        sample |= {f"Extra{i}": i for i in range(2 * MAX_PER_BODY)}
        assert len(unknown_fields(json.dumps(sample).encode(), "application/json")) == MAX_PER_BODY

    def test_every_object_of_the_structs_is_known(self):
        known = known_fields()
        assert "Score_Performance" in known["ConversationSentenceScoring"]
        assert {"Payload", "JobStatus", "ConversationAnalysisModel"} <= known.keys()


class TestMetric:
    """The metric's labels come from outside: their number is capped, the rest counted as (other)."""

    def test_label_pairs_are_capped(self):
        registry = new_registry()
        drift = DriftLog(pool=None, registry=registry, sample_rate=1.0)  # type: ignore[arg-type]
        for first in (0, MAX_LABELLED // 2, MAX_LABELLED):  # in bodies of at most MAX_PER_BODY names
            sample = json.loads(JSON_SAMPLE)
            sample |= {f"New{i}": i for i in range(first, first + MAX_LABELLED // 2)}
            drift.check(uuid.uuid4(), datetime_now(), json.dumps(sample).encode(), "application/json")
        drift.check(uuid.uuid4(), datetime_now(), json.dumps(sample).encode(), "application/json")
        series = {
            (s.labels["object"], s.labels["field"]): s.value
            for metric in registry.collect() if metric.name == "flowscribe_schema_drift_callbacks"
            for s in metric.samples if s.name.endswith("_total")
        }
        assert len(series) == MAX_LABELLED + 1
        assert series[("Payload", "New0")] == 1
        # The last body's names came after the cap: counted twice (two callbacks), under (other).
        assert series[(OTHER, OTHER)] == 2 * (MAX_LABELLED // 2)
        assert registry.get_sample_value("flowscribe_schema_drift_checked_callbacks_total") == 4

    def test_rate_zero_checks_nothing(self):
        drift = DriftLog(pool=None, registry=new_registry(), sample_rate=0.0)  # type: ignore[arg-type]
        assert drift.check(uuid.uuid4(), datetime_now(), drifted_json(), "application/json") == {}


def datetime_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class TestEndToEnd:
    """Gateway -> worker -> flowscribe.schema_drift -> `flowscribe-ingest drift`."""

    async def test_a_new_field_and_a_new_object_are_recorded_and_shown(
        self, settings, gateway, http, db, start_worker
    ):
        running = start_worker(drift_sample_rate=1.0)
        json_ids = [await post(http, gateway, drifted_json()) for _ in range(2)]
        xml_id = await post(http, gateway, drifted_xml(), "application/xml")
        plain = await post(http, gateway, XML_SAMPLE, "application/xml")

        async def recorded() -> list | None:
            rows = await db.fetch("SELECT * FROM flowscribe.schema_drift ORDER BY object, field")
            return rows if len(rows) == 5 and sum(r["callbacks"] for r in rows) == 2 * 3 + 2 else None

        rows = {(r["object"], r["field"]): r for r in await eventually(recorded, what="the drift rows")}
        ledger = await db.fetch("SELECT id, received_at FROM flowscribe.callbacks")
        received = {r["id"]: r["received_at"] for r in ledger}
        assert len(received) == 4  # every callback landed as usual, drift or not
        brand = rows[("ConversationSentenceScoring", "Score_Brand")]
        assert (brand["kind"], brand["callbacks"]) == ("field", 2)
        assert brand["first_seen"] == min(received[uuid.UUID(i)] for i in json_ids)
        assert brand["last_seen"] == max(received[uuid.UUID(i)] for i in json_ids)
        assert str(brand["example_callback_id"]) in json_ids
        assert rows[("ConversationAnalysisModel", "ConversationSummaries")]["kind"] == "object"
        assert rows[("ConversationAnalysisModel", "CallMetadata")]["kind"] == "object"
        pitch = rows[("ConversationSentences", "Pitch")]
        assert (pitch["callbacks"], str(pitch["example_callback_id"])) == (1, xml_id)
        assert all(str(r["example_callback_id"]) != plain for r in rows.values())

        shown = await ops(settings, "drift")
        assert shown.code == 0, shown.err
        line = next(line for line in shown.out.splitlines() if "Score_Brand" in line)
        assert line.split()[:4] == ["ConversationSentenceScoring", "Score_Brand", "field", "new"]
        assert "reprocess --since" in shown.err
        listed = [json.loads(line) for line in (await ops(settings, "drift", "--json")).out.splitlines()]
        assert {(r["object"], r["field"], r["callbacks"]) for r in listed} == {
            (o, f, r["callbacks"]) for (o, f), r in rows.items()
        }

        worker = await running.stop()
        value = worker.metrics.registry.get_sample_value
        assert value("flowscribe_schema_drift_callbacks_total",
                     {"object": "ConversationSentenceScoring", "field": "Score_Brand"}) == 2
        assert value("flowscribe_schema_drift_checked_callbacks_total") == 4


class TestFlush:
    """Sightings merge in memory and survive a database that is not there."""

    async def test_a_failed_flush_keeps_what_it_held_for_the_next(self, settings, db):
        target = urllib.parse.urlsplit(settings.database_url)
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
        await proxy.open()
        await proxy.close()  # the database is "down" from the DriftLog's side
        async with asyncpg.create_pool(proxy.url(settings.database_url), min_size=0) as pool:
            drift = DriftLog(pool=pool, registry=new_registry(), sample_rate=1.0)
            first, last = uuid.uuid4(), uuid.uuid4()
            t0 = datetime_now()
            drift.check(first, t0, drifted_json(), "application/json")
            await drift.flush()  # fails: logged, held
            later = t0.replace(year=t0.year + 1)
            drift.check(last, later, drifted_json(), "application/json")
            await proxy.open()  # the database is back
            try:
                await drift.flush()
            finally:
                await proxy.close()
        row = await db.fetchrow("SELECT * FROM flowscribe.schema_drift"
                                " WHERE object = 'ConversationSentenceScoring' AND field = 'Score_Brand'")
        assert (row["callbacks"], row["first_seen"], row["last_seen"]) == (2, t0, later)
        assert row["example_callback_id"] == last
