"""Hostile payloads, end to end and by the thousand: nothing gets past the decoders but Payloads or reasons.

Whatever a sender puts in a body, the worker either stores a well-defined value
or dead-letters the message with the reason; ``decode_payload`` raises nothing
but PayloadDecodeError, opens no file or connection, and neither hangs nor
balloons. The first classes send attacks through the real gateway and worker;
the property-based ones throw arbitrary and mutated bodies at the decoders.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import io
import json
import math
import resource
import time
import uuid
from collections.abc import Iterator
from typing import Any, Self

import aio_pika
import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from lxml import etree

from schemas import topology
from schemas.decoding import PayloadDecodeError, decode_payload
from schemas.payload import Payload
from tests.support import JSON_SAMPLE, TOKEN, XML_SAMPLE, eventually

# Seconds any single decode may take: a guard against hangs and blow-ups, not a benchmark.
FAST = 2.0
# Growth of the test process's peak RSS a single decode may cause.
SMALL = 64 * 1024 * 1024

EXAMPLES = hsettings(
    max_examples=150, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Listener:
    """A loopback TCP port that counts who connects: an XML parser fetching a DTD or entity would."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def xml_attacks(port: int, secret_file: str) -> dict[str, bytes]:
    """The classic XML attacks, each aimed at the payload's ErrorMsg text."""

    def doc(doctype: str, error_msg: str) -> bytes:
        return (f'<?xml version="1.0"?>{doctype}<PayLoadSample><JobStatus>'
                f"<ErrorMsg>{error_msg}</ErrorMsg></JobStatus></PayLoadSample>").encode()

    def utf16(body: bytes) -> bytes:
        # Past the decoder's byte scan for "<!DOCTYPE": only the parser's own settings stand.
        return body.replace(b'version="1.0"?>', b'version="1.0" encoding="UTF-16"?>', 1).decode().encode("utf-16")

    laughs = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    blowup = "A" * 50_000
    return {
        "billion laughs": doc(f"<!DOCTYPE p [{laughs}]>", "&lol9;"),
        "billion laughs in UTF-16": utf16(doc(f"<!DOCTYPE p [{laughs}]>", "&lol9;")),
        "quadratic blowup": doc(f'<!DOCTYPE p [<!ENTITY a "{blowup}">]>', "&a;" * 50_000),
        "quadratic blowup in UTF-16": utf16(doc(f'<!DOCTYPE p [<!ENTITY a "{blowup}">]>', "&a;" * 50_000)),
        "external entity file://": doc(f'<!DOCTYPE p [<!ENTITY x SYSTEM "file://{secret_file}">]>', "&x;"),
        "external entity http://": doc(f'<!DOCTYPE p [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/x">]>', "&x;"),
        "external DTD": doc(f'<!DOCTYPE PayLoadSample SYSTEM "http://127.0.0.1:{port}/evil.dtd">', "x"),
        "parameter entity": doc(f'<!DOCTYPE p [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p.dtd"> %p;]>', "x"),
        "external entity in UTF-16": (
            f'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE p [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/u">]>'
            "<PayLoadSample><JobStatus><ErrorMsg>&x;</ErrorMsg></JobStatus></PayLoadSample>"
        ).encode("utf-16"),
        "XInclude": (
            '<PayLoadSample xmlns:xi="http://www.w3.org/2001/XInclude"'
            ' xmlns="http://schemas.datacontract.org/2004/07/CSP.AI.Portal.Models"><JobStatus><ErrorMsg>'
            f'<xi:include href="file://{secret_file}" parse="text"/>'
            f'<xi:include href="http://127.0.0.1:{port}/xi" parse="text"/>'
            "</ErrorMsg></JobStatus></PayLoadSample>"
        ).encode(),
    }


@contextlib.contextmanager
def bounded(what: str) -> Iterator[None]:
    """The block must finish within FAST seconds and grow the peak RSS by less than SMALL."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert elapsed < FAST, f"{what}: {elapsed:.2f} s"
    assert grown < SMALL, f"{what}: peak RSS grew {grown / 2**20:.0f} MiB"


class TestXmlAttacksDecoded:
    """Each XML attack is refused at once, with a reason, no file or socket opened, no memory spent."""

    async def test_each_attack(self, tmp_path):
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP-SECRET-CONTENT")
        async with Listener() as listener:
            for name, body in xml_attacks(listener.port, str(secret)).items():
                with bounded(name), pytest.raises(PayloadDecodeError) as refused:
                    decode_payload(body, "application/xml")
                reason = str(refused.value)
                assert "TOP-SECRET" not in reason, name
                # XInclude needs no DTD: its element is markup where text belongs.
                # A bomb in UTF-16 gets past the byte scan; libxml2's amplification limit stops it.
                expected = ("got `object` - at `$.JobStatus.ErrorMsg`",) if name == "XInclude" else (
                    "DOCTYPE/DTD or entity declarations are not allowed", "entity amplification")
                assert any(e in reason for e in expected), f"{name}: {reason}"
            await asyncio.sleep(0)  # let the listener accept anything already on its way
        assert listener.connections == 0


async def post(http, gateway, body: bytes, content_type: str) -> str:
    async with http.post(gateway.make_url(f"/flowscribe/callback/{TOKEN}"), data=io.BytesIO(body),
                         headers={"Content-Type": content_type}) as r:
        assert r.status == 202, await r.text()
        return (await r.json())["id"]


async def dead_letters_by_id(broker: aio_pika.abc.AbstractChannel, expected: int) -> dict[str | None, Any] | None:
    """All dead letters (consumed) once there are ``expected`` of them, by message id."""
    queue = await broker.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
    if queue.declaration_result.message_count < expected:
        return None
    queue = await broker.get_queue(topology.DEAD_LETTER_QUEUE)
    found = {}
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        found[message.message_id] = message
    return found


class TestXmlAttacksEndToEnd:
    """Posted to the gateway, every XML attack ends in the dead-letter queue with its reason."""

    async def test_dead_lettered_with_reason(self, gateway, http, broker, db, start_worker, tmp_path):
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP-SECRET-CONTENT")
        async with Listener() as listener:
            attacks = xml_attacks(listener.port, str(secret))
            ids = {await post(http, gateway, body, "application/xml"): name for name, body in attacks.items()}
            started = time.monotonic()
            start_worker()
            letters = await eventually(lambda: dead_letters_by_id(broker, len(ids)), what="every attack dead-lettered")
            elapsed = time.monotonic() - started
        assert set(letters) == set(ids)
        for message_id, letter in letters.items():
            headers = letter.headers
            assert headers[topology.HEADER_ERROR_STAGE] == "decode", ids[message_id]
            assert headers[topology.HEADER_ERROR].startswith("PayloadDecodeError: invalid XML payload")
            assert "TOP-SECRET" not in headers[topology.HEADER_ERROR]
            assert letter.body == attacks[ids[message_id]]  # kept as received, for inspection
        assert listener.connections == 0
        assert await db.fetchval("SELECT count(*) FROM flowscribe.callbacks") == 0
        assert elapsed < 10 * FAST


def sample(**analysis: Any) -> dict[str, Any]:
    """The vendor's JSON sample with a fresh analysis id (so no two bodies supersede each other)."""
    doc = json.loads(JSON_SAMPLE)
    doc["ConversationAnalysisModel"]["ID"] = str(uuid.uuid4())
    doc["ConversationAnalysisModel"].update(analysis)
    return doc


def dumps(doc: Any, *, ensure_ascii: bool = True) -> bytes:
    return json.dumps(doc, ensure_ascii=ensure_ascii).encode()


def first_sentence(**fields: Any) -> dict[str, Any]:
    doc = sample()
    doc["ConversationAnalysisModel"]["ConversationSentences"][0].update(fields)
    return doc


def json_attacks() -> dict[str, tuple[bytes, str]]:
    """name -> (body, what becomes of it: an outcome, or "dead: <part of the reason>")."""
    big_text = "é" * (3 * 1024 * 1024)
    duplicate = dumps(sample()).replace(b'{"Success": true,', b'{"Success": false, "Success": true,', 1)
    assert duplicate.count(b'"Success": false') == 1
    return {
        "deep arrays": (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "dead: nested deeper"),
        "deep objects": (b'{"x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", "dead: nested deeper"),
        "unclosed depth": (b"[" * 1_000_000, "dead: nested deeper"),
        "enormous float": (dumps(sample()).replace(b'"Confidence": 5.1', b'"Confidence": 1e400', 1),
                           "dead: Number out of range"),
        "enormous integer": (dumps(first_sentence(SpeakerTypeID=10**40)), "dead: "),
        "integer past int4": (dumps(first_sentence(SpeakerTypeID=2**31)), "dead: out of range"),
        "enormous string": (dumps(sample(ConversationText=big_text), ensure_ascii=False), "ingested"),
        "wrong types": (dumps({"Success": "yes", "ConversationAnalysisModel": []}), "dead: Expected `bool"),
        "invalid UTF-8": (dumps(sample(ConversationText="PLACEHOLDER")).replace(b"PLACEHOLDER", b"\xff\xfe\xc0"),
                          "dead: "),
        "UTF-8 BOM": (b"\xef\xbb\xbf" + dumps(sample()), "ingested"),
        "UTF-16": (json.dumps(sample()).encode("utf-16"), "dead: UTF-16"),
        "duplicate keys (the last wins)": (duplicate, "ingested"),
        "NaN": (b'{"Success": NaN}', "dead: malformed"),
        "Infinity": (b'{"Success": true, "x": Infinity}', "dead: malformed"),
        "NUL": (dumps(sample(ConversationText="a\0b")), "dead: NUL"),
        "lone surrogate": (dumps(sample(ConversationText="a\ud800b")), "dead: surrogate"),
        "not an object": (b'"just a string"', "dead: Expected `object`"),
    }


class TestJsonAttacksEndToEnd:
    """Each hostile JSON body posted to the gateway is stored as a well-defined value or dead-lettered with a reason."""

    async def test_stored_or_dead_lettered(self, gateway, http, broker, db, start_worker):
        attacks = json_attacks()
        ids = {await post(http, gateway, body, "application/json"): name for name, (body, _) in attacks.items()}
        dead = [name for name, (_, fate) in attacks.items() if fate.startswith("dead")]
        start_worker()
        letters = await eventually(lambda: dead_letters_by_id(broker, len(dead)), what="the dead letters")

        async def outcomes():
            rows = await db.fetch("SELECT id::text, outcome FROM flowscribe.callbacks")
            return {r["id"]: r["outcome"] for r in rows} if len(rows) == len(ids) - len(dead) else None

        stored = await eventually(outcomes, what="the stored callbacks")
        for message_id, name in ids.items():
            fate = attacks[name][1]
            if fate.startswith("dead: "):
                assert message_id in letters, f"{name} was not dead-lettered"
                reason = letters[message_id].headers[topology.HEADER_ERROR]
                assert reason.startswith("PayloadDecodeError: "), f"{name}: {reason}"
                assert fate.removeprefix("dead: ") in reason, f"{name}: {reason}"
                assert len(reason) <= 600 and "\n" not in reason
            else:
                assert stored.get(message_id) == fate, name
        text = await db.fetchval(
            "SELECT conversation_text FROM flowscribe.analyses WHERE callback_id = $1::uuid",
            next(i for i, n in ids.items() if n == "enormous string"))
        assert text == "é" * (3 * 1024 * 1024)


# ------------------------------------------------------- timestamps at the edge

BEYOND_PYTHON_IN_UTC = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:00:00-14:00"]


class TestDatetimesBeyondPythonInUtc:
    """A timestamp whose UTC instant leaves Python's years is still one PostgreSQL holds: it lands
    (store.timestamps), with neighbours, and nothing crashes. The exact values: test_edge_dates."""

    @pytest.mark.parametrize("text", BEYOND_PYTHON_IN_UTC)
    def test_decoded_with_its_offset(self, text):
        payload = decode_payload(dumps(sample(DateCreated=text)), "application/json")
        assert payload.ConversationAnalysisModel.DateCreated.isoformat() == text

    def test_edge_years_that_fit_are_kept(self):
        payload = decode_payload(dumps(sample(DateCreated="0001-01-01T12:00:00+01:00")), "application/json")
        assert payload.ConversationAnalysisModel.DateCreated.year == 1

    async def test_stored_beside_the_rest(self, gateway, http, broker, db, start_worker):
        edge = await post(http, gateway, dumps(sample(DateCreated=BEYOND_PYTHON_IN_UTC[0])), "application/json")
        good = await post(http, gateway, dumps(sample()), "application/json")
        start_worker()

        async def landed():
            rows = await db.fetch("SELECT outcome FROM flowscribe.callbacks WHERE id = ANY($1::uuid[])", [edge, good])
            return sorted(r["outcome"] for r in rows) if len(rows) == 2 else None
        assert await eventually(landed) == ["ingested", "ingested"]
        assert await db.fetchval("SELECT count(*) FROM flowscribe.analyses WHERE isfinite(date_created)") == 2


# ------------------------------------------------------------- property-based


def check_contract(body: bytes, content_type: str) -> Payload | None:
    """decode_payload's contract: a storable Payload, or PayloadDecodeError with a one-line reason."""
    try:
        payload = decode_payload(body, content_type)
    except PayloadDecodeError as e:
        reason = str(e)
        assert reason and "\n" not in reason and len(reason) <= 500
        return None
    assert isinstance(payload, Payload)
    assert_storable(payload)
    return payload


def assert_storable(value: Any, path: str = "$") -> None:
    """What the decoder promises the writer: aware datetimes, no NUL, int4 integers, finite floats."""
    if isinstance(value, str):
        assert "\0" not in value, path
        value.encode("utf-8")  # no lone surrogates
    elif isinstance(value, datetime.datetime):
        assert value.tzinfo is not None, path
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        assert -(2**31) <= value < 2**31, path
    elif isinstance(value, float):
        assert math.isfinite(value), path
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_storable(item, f"{path}[{i}]")
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            assert_storable(getattr(value, name), f"{path}.{name}")


JSON_SAMPLE_DOC = json.loads(JSON_SAMPLE)


def leaf_paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document a value sits (the containers too)."""
    paths = [path] if path else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            paths += leaf_paths(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            paths += leaf_paths(v, (*path, i))
    return paths


SAMPLE_PATHS = leaf_paths(JSON_SAMPLE_DOC)

# Values a sender might put anywhere: every JSON type, with the awkward corners in.
timezones = st.builds(datetime.timezone, st.timedeltas(min_value=datetime.timedelta(hours=-23),
                                                       max_value=datetime.timedelta(hours=23)))
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(), st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
    st.uuids().map(str),
    st.datetimes(timezones=st.none() | timezones).map(lambda d: d.isoformat()),
    st.sampled_from(["", " ", "true", "1", "5.1", "\0", "/Date(1733462277308+0000)/", "\\/Date(-1)\\/"]),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=10)


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    """The vendor sample with one to three fields replaced by anything, or removed."""
    doc = copy.deepcopy(JSON_SAMPLE_DOC)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(SAMPLE_PATHS))
        parent = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced the way there
    return json.dumps(doc).encode()


XML_SAMPLE_TREE = etree.fromstring(XML_SAMPLE)
XML_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
# Text lxml can put in a document (XML 1.0 characters; no surrogates, no NUL).
xml_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0\ufffe\uffff",
                                          exclude_categories=["Cs", "Cc"]) | st.sampled_from("\t\n\r"))
xml_scalars = st.one_of(
    xml_text, st.sampled_from(["", " ", "NaN", "INF", "-inf", "1e400", "true", "0", "2147483648", "5.1"]),
    st.integers().map(str), st.floats().map(str), st.uuids().map(str),
    st.datetimes(timezones=st.none() | timezones).map(lambda d: d.isoformat()),
)


@st.composite
def mutated_xml(draw: st.DrawFn) -> bytes:
    """The vendor XML sample with one to three elements changed: new text, removed, doubled, nil, or a child."""
    tree = copy.deepcopy(XML_SAMPLE_TREE)
    for _ in range(draw(st.integers(1, 3))):
        elements = [e for e in tree.iter() if e is not tree]
        if not elements:
            break
        elem = elements[draw(st.integers(0, len(elements) - 1))]
        action = draw(st.sampled_from(["text", "remove", "double", "nil", "child"]))
        if action == "text":
            elem.text = draw(xml_scalars)
        elif action == "remove" and elem.getparent() is not None:
            elem.getparent().remove(elem)
        elif action == "double" and elem.getparent() is not None:
            elem.addnext(copy.deepcopy(elem))
        elif action == "nil":
            elem.set(XML_NIL, draw(st.sampled_from(["true", "1", "false", " true "])))
        else:
            etree.SubElement(elem, elem.tag).text = draw(xml_text)
    encoding = draw(st.sampled_from(["utf-8", "utf-16"]))
    return etree.tostring(tree, encoding=encoding, xml_declaration=True)


@st.composite
def corrupted(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` with a few bytes changed, cut or inserted: what a broken sender or proxy makes."""
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
        if action == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


class TestDecoderProperties:
    """For any input, the decoders return a storable Payload or raise PayloadDecodeError, and nothing else."""

    @EXAMPLES
    @given(body=st.binary(max_size=2048), content_type=st.sampled_from(["application/json", "application/xml"]))
    def test_arbitrary_bytes(self, body, content_type):
        check_contract(body, content_type)

    @EXAMPLES
    @given(body=st.sampled_from([b"{", b"[", b"<", b"<?xml", b'{"Success"', b"<PayLoadSample>"]).flatmap(
        lambda prefix: st.binary(max_size=512).map(lambda rest: prefix + rest)),
        content_type=st.sampled_from(["application/json", "text/xml"]))
    def test_arbitrary_bytes_after_a_plausible_start(self, body, content_type):
        check_contract(body, content_type)

    @EXAMPLES
    @given(body=mutated_json())
    def test_json_sample_mutated_field_by_field(self, body):
        check_contract(body, "application/json")

    @EXAMPLES
    @given(body=mutated_xml())
    def test_xml_sample_mutated_element_by_element(self, body):
        check_contract(body, "application/xml")

    @EXAMPLES
    @given(body=corrupted(JSON_SAMPLE))
    def test_json_sample_corrupted(self, body):
        check_contract(body, "application/json")

    @EXAMPLES
    @given(body=corrupted(XML_SAMPLE))
    def test_xml_sample_corrupted(self, body):
        check_contract(body, "application/xml")

    @EXAMPLES
    @given(value=json_values)
    def test_any_value_as_a_string_field(self, value):
        """ErrorMsg set to any JSON value: a string is kept verbatim (the same from XML), anything else refused."""
        doc = copy.deepcopy(JSON_SAMPLE_DOC)
        doc["JobStatus"]["ErrorMsg"] = value
        payload = check_contract(json.dumps(doc).encode(), "application/json")
        if value is None:
            assert payload is not None and payload.JobStatus.ErrorMsg is None
        elif not isinstance(value, str):
            assert payload is None
        elif "\0" in value:
            assert payload is None  # PostgreSQL text cannot hold NUL
        else:
            assert payload is not None and payload.JobStatus.ErrorMsg == value
            tree = copy.deepcopy(XML_SAMPLE_TREE)
            [element] = tree.xpath("//*[local-name()='JobStatus']/*[local-name()='ErrorMsg']")
            with contextlib.suppress(ValueError):  # lxml refuses characters XML 1.0 cannot hold
                element.text = value
                from_xml = check_contract(etree.tostring(tree), "application/xml")
                assert from_xml is not None and from_xml.JobStatus.ErrorMsg == value
