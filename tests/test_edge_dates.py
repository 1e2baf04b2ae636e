"""Edge timestamps: every instant PostgreSQL's timestamptz can hold is stored as that instant,
what it cannot hold is dead-lettered with a reason naming the field, JSON and XML alike.

.NET senders write ``DateTime.MinValue`` (0001-01-01T00:00:00) for "unset" and
``DateTime.MaxValue`` with seven fractional digits; asyncpg turned the first into
``-infinity`` and 9999-12-31T23:59:59.999999Z into ``infinity``, and the decoder
rounded the seventh digit past the last representable microsecond.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid

import pytest

from schemas import topology
from schemas.decoding import decode_payload
from tests.support import JSON_SAMPLE, XML_SAMPLE, eventually
from tests.test_decoding import JSON, XML, json_body, rejected, xml_body
from tests.test_pipeline import T0, publish_as_gateway
from tests.test_worker import _dead_letters_n

UTC = datetime.UTC
MAX = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
MIN = datetime.datetime(1, 1, 1, tzinfo=UTC)

# text sent -> the instant PostgreSQL must hold, as PostgreSQL writes it in UTC
STORABLE = {
    "0001-01-01T00:00:00": "0001-01-01 00:00:00+00",
    "0001-01-01T00:00:00Z": "0001-01-01 00:00:00+00",
    "9999-12-31T23:59:59.999999Z": "9999-12-31 23:59:59.999999+00",
    "9999-12-31T23:59:59.9999999": "9999-12-31 23:59:59.999999+00",
    "9999-12-31T23:59:59.9999999+00:00": "9999-12-31 23:59:59.999999+00",
    "9999-12-31T23:59:59.9999999Z": "9999-12-31 23:59:59.999999+00",
    # Instants beyond Python's year range once in UTC, well inside PostgreSQL's.
    "9999-12-31T23:59:59.9999999-05:00": "10000-01-01 04:59:59.999999+00",
    "0001-01-01T00:00:00+14:00": "0001-12-31 10:00:00+00 BC",
    "2025-12-06T05:17:57.3085838": "2025-12-06 05:17:57.308583+00",  # truncated, not rounded
    "/Date(-62135596800000)/": "0001-01-01 00:00:00+00",
    "/Date(253402300799999+0100)/": "9999-12-31 23:59:59.999+00",
}
# Not an instant Python can hold: refused, naming the field.
UNSTORABLE = ["10000-01-01T00:00:00Z", "/Date(253402300800000)/", "/Date(-62135596800001)/"]


def json_with(date: str) -> bytes:
    body = json_body({"DateCreated": date})
    return body.replace(b"/", b"\\/") if date.startswith("/Date") else body  # as .NET escapes it


def xml_with(date: str) -> bytes:
    return xml_body(f"<d2p1:DateCreated>{date}</d2p1:DateCreated>")


class TestDecoded:
    """The decoder keeps the instant; seven digits are truncated, never rounded."""

    @pytest.mark.parametrize("body", [json_with, xml_with], ids=["json", "xml"])
    @pytest.mark.parametrize(("text", "expected"), [
        ("0001-01-01T00:00:00", MIN),
        ("9999-12-31T23:59:59.999999Z", MAX),
        ("9999-12-31T23:59:59.9999999", MAX),
        ("9999-12-31T23:59:59.9999999Z", MAX),
        ("9999-12-31T23:59:59.9999999+00:00", MAX),
        ("2025-12-06T05:17:57.3085838", datetime.datetime(2025, 12, 6, 5, 17, 57, 308583, tzinfo=UTC)),
        ("2025-12-06T05:17:57.30858399999-02:00",
         datetime.datetime(2025, 12, 6, 7, 17, 57, 308583, tzinfo=UTC)),
        ("/Date(1764998277308)/", datetime.datetime(2025, 12, 6, 5, 17, 57, 308000, tzinfo=UTC)),
        ("/Date(1764998277308-0500)/", datetime.datetime(2025, 12, 6, 5, 17, 57, 308000, tzinfo=UTC)),
    ])
    def test_instant_kept(self, body, text: str, expected: datetime.datetime) -> None:
        got = decode_payload(body(text), JSON if body is json_with else XML).ConversationAnalysisModel.DateCreated
        assert got == expected and got.utcoffset() is not None

    @pytest.mark.parametrize("body", [json_with, xml_with], ids=["json", "xml"])
    @pytest.mark.parametrize("text", ["9999-12-31T23:59:59.9999999-05:00", "0001-01-01T00:00:00+14:00"])
    def test_beyond_python_in_utc_but_not_in_postgresql(self, body, text: str) -> None:
        got = decode_payload(body(text), JSON if body is json_with else XML).ConversationAnalysisModel.DateCreated
        assert got.isoformat().startswith(text[:19])

    @pytest.mark.parametrize("body", [json_with, xml_with], ids=["json", "xml"])
    @pytest.mark.parametrize("text", UNSTORABLE)
    def test_unstorable_refused_naming_the_field(self, body, text: str) -> None:
        reason = rejected(body(text), JSON if body is json_with else XML)
        assert "$.ConversationAnalysisModel.DateCreated" in reason

    def test_legacy_form_same_in_both(self) -> None:
        date = "/Date(1764998277308+0000)/"
        assert decode_payload(json_with(date), JSON) == decode_payload(xml_with(date), XML)


def _json_callback(date: str, analysis_id: str) -> bytes:
    sample = json.loads(JSON_SAMPLE)
    sample["ConversationAnalysisModel"].update(ID=analysis_id, DateCreated=date)
    body = json.dumps(sample)
    return (body.replace("/", "\\/") if date.startswith("/Date") else body).encode()


def _xml_callback(date: str, analysis_id: str) -> bytes:
    # The analysis's own DateCreated is the last one in the sample.
    body = XML_SAMPLE.decode().replace("c655c2ed-9abb-49e0-a8ce-399a897ca5d3", analysis_id)
    *head, tail = body.rsplit("<d2p1:DateCreated>2025-12-06T05:17:57.308584+00:00</d2p1:DateCreated>", 1)
    return "".join([*head, f"<d2p1:DateCreated>{date}</d2p1:DateCreated>", tail]).encode()


class TestStored:
    """What lands in PostgreSQL is the instant sent: no infinity, nothing dead-lettered that fits."""

    @pytest.mark.parametrize(("build", "content_type"), [(_json_callback, JSON), (_xml_callback, XML)],
                             ids=["json", "xml"])
    async def test_edges_land_as_the_instant(self, db, broker, start_worker, build, content_type):
        sent = {str(uuid.uuid4()): text for text in STORABLE}
        refused = {}
        for analysis_id, text in sent.items():
            await publish_as_gateway(broker, build(text, analysis_id), received_at=T0, content_type=content_type)
        for text in UNSTORABLE:
            message_id = await publish_as_gateway(broker, build(text, str(uuid.uuid4())), received_at=T0,
                                                  content_type=content_type)
            refused[message_id] = text
        start_worker()

        async def all_landed() -> bool:
            return await db.fetchval("SELECT count(*) FROM flowscribe.analyses") == len(sent)

        await eventually(all_landed, what="every storable callback")
        async with db.acquire() as conn:
            # As text, in UTC: asyncpg cannot return the instants beyond Python's years.
            await conn.execute("SET TimeZone = 'UTC'")
            rows = await conn.fetch("SELECT id::text, date_created::text AS stored FROM flowscribe.analyses")
            await conn.execute("RESET TimeZone")
        stored = {row["id"]: row["stored"] for row in rows}
        assert {text: stored[analysis_id] for analysis_id, text in sent.items()} == STORABLE

        letters = {m.message_id: m for m in await eventually(lambda: _dead_letters_n(broker, len(refused)))}
        assert set(letters) == set(refused)
        for letter in letters.values():
            assert re.search(r"ConversationAnalysisModel\.DateCreated", letter.headers[topology.HEADER_ERROR])
