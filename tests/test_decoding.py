"""decode_payload: both vendor formats give the same Payload, and hostile bodies fail only
with PayloadDecodeError, quickly, and with a reason that says what is wrong and where."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.decoding import MAX_JSON_DEPTH, PayloadDecodeError, decode_payload
from schemas.payload import Payload, SentenceScoring

SAMPLES = Path(__file__).parents[1] / "schemas" / "samples"  # the vendor's own, shipped with the contract
JSON_SAMPLE = (SAMPLES / "vendor-sample.json").read_bytes()
XML_SAMPLE = (SAMPLES / "vendor-sample.xml").read_bytes()
JSON, XML = "application/json", "application/xml"

UTC = datetime.UTC
ANALYSIS_ID = "c655c2ed-9abb-49e0-a8ce-399a897ca5d3"
SENTENCE_ID = "5fddb6f6-9319-4ee8-b054-28b1574fe5ed"
SAMPLE_TIME = datetime.datetime(2025, 12, 6, 5, 17, 57, 308584, tzinfo=UTC)
# A safety net against hangs and blow-ups, not a performance claim.
FAST = 2.0

XML_NS = (
    'xmlns:i="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns="http://schemas.datacontract.org/2004/07/CSP.AI.Portal.Models"'
)
D2P1 = 'xmlns:d2p1="http://schemas.datacontract.org/2004/07/CSP.AI.Portal.DataLayer.Common"'


def json_body(analysis: dict[str, Any] | None = None, **top: Any) -> bytes:
    """A JSON body with an analysis (its ID filled in) and any top-level fields."""
    doc = dict(top)
    if analysis is not None:
        doc["ConversationAnalysisModel"] = {"ID": ANALYSIS_ID, **analysis}
    return json.dumps(doc).encode()


def xml_body(analysis: str = "", rest: str = "") -> bytes:
    """A DataContract body: ``analysis`` goes inside ConversationAnalysisModel (d2p1 prefix)."""
    return (
        f"<PayLoadSample {XML_NS}><ConversationAnalysisModel {D2P1}>"
        f"<d2p1:ID>{ANALYSIS_ID}</d2p1:ID>{analysis}</ConversationAnalysisModel>{rest}</PayLoadSample>"
    ).encode()


def xml_sentence(inner: str) -> str:
    return (
        "<d2p1:ConversationSentences><d2p1:ConversationSentenceModel>"
        f"<d2p1:ID>{SENTENCE_ID}</d2p1:ID>{inner}"
        "</d2p1:ConversationSentenceModel></d2p1:ConversationSentences>"
    )


def rejected(body: bytes, content_type: str) -> str:
    """The reason decode_payload gives for ``body``; fails if it takes longer than FAST."""
    started = time.perf_counter()
    with pytest.raises(PayloadDecodeError) as caught:
        decode_payload(body, content_type)
    assert time.perf_counter() - started < FAST
    reason = str(caught.value)
    assert reason and "\n" not in reason
    return reason


def datetimes(value: Any) -> Iterator[datetime.datetime]:
    """Every datetime inside a decoded payload."""
    if isinstance(value, datetime.datetime):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from datetimes(item)
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from datetimes(getattr(value, name))


class TestSamples:
    """The vendor's JSON and XML samples decode to the same Payload, every field read."""

    def test_json_and_xml_samples_are_equal(self) -> None:
        from_json, from_xml = decode_payload(JSON_SAMPLE, JSON), decode_payload(XML_SAMPLE, XML)
        for name in Payload.__struct_fields__:  # field by field first, for a readable failure
            assert getattr(from_json, name) == getattr(from_xml, name), name
        assert from_json == from_xml

    @pytest.mark.parametrize("body, content_type", [(JSON_SAMPLE, JSON), (XML_SAMPLE, XML)])
    def test_fields_read(self, body: bytes, content_type: str) -> None:
        payload = decode_payload(body, content_type)
        assert payload.Success is True
        assert payload.JobStatus is not None
        assert payload.JobStatus.JobID == uuid.UUID("f848df59-c75b-4a2b-8798-867de380b393")
        assert (payload.JobStatus.Success, payload.JobStatus.ErrorMsg) == (True, "sample string 3")
        analysis = payload.ConversationAnalysisModel
        assert analysis is not None
        assert uuid.UUID(ANALYSIS_ID) == analysis.ID
        assert (analysis.ConversationText, analysis.LanguageCode) == ("sample string 2", "sample string 3")
        assert analysis.DateCreated == SAMPLE_TIME
        for items in (
            analysis.ConversationSentenceEntities, analysis.ConversationSentenceIntents,
            analysis.ConversationSentenceKeywords, analysis.ConversationSentences,
            analysis.ConversationSentenceScoring, analysis.ConversationSentenceTopics,
        ):
            assert items is not None and len(items) == 2 and items[0] == items[1]
        entity = analysis.ConversationSentenceEntities[0]
        assert uuid.UUID("2667302b-dcd3-423e-be74-27230de01f4b") == entity.ID
        assert (entity.EntityName, entity.Confidence, entity.SpeakerLabel, entity.IsAgent) == (
            "sample string 4", 5.1, "sample string 6", True,
        )
        assert analysis.ConversationSentenceIntents[0].Intent == "sample string 4"
        assert analysis.ConversationSentenceKeywords[0].SentenceID == uuid.UUID("9692eb3b-d231-480f-9d2c-a1a6cd939f07")
        sentence = analysis.ConversationSentences[0]
        assert uuid.UUID(SENTENCE_ID) == sentence.ID
        assert sentence.AudioConversationID == uuid.UUID("7a7c858d-0c3f-4584-9de7-92c770589e8c")
        assert (sentence.Sentence, sentence.SpeakerLabel, sentence.ExtraInfo) == (
            "sample string 3", "sample string 4", "sample string 8",
        )
        assert sentence.SpeakerTypeID == 5 and type(sentence.SpeakerTypeID) is int
        assert sentence.IsAgent is True and sentence.DateCreated == SAMPLE_TIME
        topic = analysis.ConversationSentenceTopics[0]
        assert (topic.Topic, topic.Confidence, topic.Rank, topic.Duration) == ("sample string 4", 5.1, 8.1, 9.1)
        assert (topic.StartSeconds, topic.EndSeconds, topic.IsAgent) == (11.1, 12.1, True)
        assert topic.TimeStamp == SAMPLE_TIME and topic.TimeStamp.tzinfo is not None

    @pytest.mark.parametrize("body, content_type", [(JSON_SAMPLE, JSON), (XML_SAMPLE, XML)])
    def test_every_scoring_field_read(self, body: bytes, content_type: str) -> None:
        scoring = decode_payload(body, content_type).ConversationAnalysisModel.ConversationSentenceScoring[0]
        floats = [
            "Score_Performance", "Score_Empathy", "Score_Quality", "Score_Ownership", "Score_Compliments",
            "Score_Summary", "CustomerSatisfactionPercentage", "SilencePercentage",
            "ProblemResolutionPercentage", "CustomerEffortPercentage", "CustomerAverageRating",
            "WaitingTime", "CustomerQuestionsTime", "AgentTime", "CustomersDissatisfiedPercentage",
        ]
        # The sample numbers them 5.1, 6.1, ...; CrossTalking..SentimentScore go on from 21.1.
        assert [getattr(scoring, f) for f in floats] == [n + 0.1 for n in range(5, 20)]
        later = ["CrossTalking", "Joy", "Negativity", "Anger", "Shouting", "Disgust", "Fear", "Sadness",
                 "Relevance", "SentimentScore"]
        assert [getattr(scoring, f) for f in later] == [n + 0.1 for n in range(21, 31)]
        assert scoring.Score_Performance == 5.1
        assert (scoring.StayingAtHome, scoring.TestedPositive, scoring.TestedNegative) == (True, True, True)
        assert scoring.LivingWithEldery is True
        assert scoring.Date == scoring.DateUpdated == SAMPLE_TIME
        assert scoring.AgentID == uuid.UUID("823ed4aa-7b08-4e5f-8ad1-2e3eb381d1b0")
        checked = {"ID", "DictationID", "SentenceID", "AgentID", "StayingAtHome", "TestedPositive",
                   "TestedNegative", "LivingWithEldery", "Date", "DateUpdated", *floats, *later}
        assert checked == set(SentenceScoring.__struct_fields__)

    def test_xml_in_utf16_decodes_the_same(self) -> None:
        body = XML_SAMPLE.decode().encode("utf-16")  # with a byte order mark, as .NET writes it
        assert decode_payload(body, "text/xml; charset=utf-16") == decode_payload(JSON_SAMPLE, JSON)

    def test_concurrent_xml_decoding_in_threads(self) -> None:
        expected = decode_payload(XML_SAMPLE, XML)
        results: list[Payload] = []
        threads = [threading.Thread(target=lambda: results.extend(decode_payload(XML_SAMPLE, XML) for _ in range(20)))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 80 and all(r == expected for r in results)


class TestContentType:
    """The media type picks the decoder, case-insensitively, with its parameters ignored."""

    @pytest.mark.parametrize("content_type", [
        "application/json", "text/json; charset=utf-8", "Application/JSON;charset=UTF-8", " application/json ",
        "application/vnd.flowscribe+json",
    ])
    def test_json_types(self, content_type: str) -> None:
        assert decode_payload(JSON_SAMPLE, content_type).ConversationAnalysisModel is not None

    @pytest.mark.parametrize("content_type", [
        "application/xml", "text/xml", "text/xml; charset=utf-8", "TEXT/XML; Charset=UTF-8",
        "text/xml; charset=utf-16le",  # the document's BOM wins over a label (test_xml_contract)
    ])
    def test_xml_types(self, content_type: str) -> None:
        body = XML_SAMPLE.decode().encode("utf-16") if "utf-16" in content_type else XML_SAMPLE
        assert decode_payload(body, content_type).ConversationAnalysisModel is not None

    @pytest.mark.parametrize("content_type", [
        None, "", "text/plain", "application/x-www-form-urlencoded", "json", "application/octet-stream",
    ])
    def test_unsupported(self, content_type: str | None) -> None:
        assert "unsupported content type" in rejected(JSON_SAMPLE, content_type)  # type: ignore[arg-type]

    def test_body_of_the_other_format(self) -> None:
        assert rejected(JSON_SAMPLE, XML).startswith("invalid XML payload")
        assert rejected(XML_SAMPLE, JSON).startswith("invalid JSON payload")


class TestNullsAndOptionalFields:
    """i:nil and JSON null give None; missing optional fields give None; empty strings stay ''."""

    def test_xml_nil(self) -> None:
        body = xml_body(
            xml_sentence('<d2p1:Sentence i:nil="true"/><d2p1:SpeakerTypeID i:nil="true"/>'
                         '<d2p1:DateCreated i:nil="true"></d2p1:DateCreated>')
            + '<d2p1:ConversationSentenceTopics i:nil="true"/><d2p1:ConversationText i:nil="1"/>',
            rest='<JobStatus i:nil="true"/><Success i:nil="true"/>',
        )
        payload = decode_payload(body, XML)
        sentence = payload.ConversationAnalysisModel.ConversationSentences[0]
        assert (sentence.Sentence, sentence.SpeakerTypeID, sentence.DateCreated) == (None, None, None)
        assert payload.ConversationAnalysisModel.ConversationSentenceTopics is None
        assert payload.ConversationAnalysisModel.ConversationText is None
        assert (payload.JobStatus, payload.Success) == (None, None)

    def test_xml_empty_element_is_empty_string_but_not_a_number(self) -> None:
        sentence = decode_payload(xml_body(xml_sentence("<d2p1:Sentence/>")), XML).ConversationAnalysisModel
        assert sentence.ConversationSentences[0].Sentence == ""
        reason = rejected(xml_body(xml_sentence("<d2p1:SpeakerTypeID/>")), XML)
        assert "$.ConversationAnalysisModel.ConversationSentences[0].SpeakerTypeID" in reason

    def test_json_null(self) -> None:
        body = json_body({"ConversationSentences": [{"ID": SENTENCE_ID, "Sentence": None, "DateCreated": None}],
                          "ConversationSentenceTopics": None}, JobStatus=None, Success=None)
        payload = decode_payload(body, JSON)
        sentence = payload.ConversationAnalysisModel.ConversationSentences[0]
        assert (sentence.Sentence, sentence.DateCreated) == (None, None)
        assert (payload.JobStatus, payload.ConversationAnalysisModel.ConversationSentenceTopics) == (None, None)

    @pytest.mark.parametrize("body, content_type", [
        (json_body({"ConversationSentences": [{"ID": SENTENCE_ID}]}), JSON),
        (xml_body(xml_sentence("")), XML),
    ])
    def test_missing_optional_fields(self, body: bytes, content_type: str) -> None:
        payload = decode_payload(body, content_type)
        assert (payload.Success, payload.JobStatus) == (None, None)
        sentence = payload.ConversationAnalysisModel.ConversationSentences[0]
        assert sentence == type(sentence)(ID=uuid.UUID(SENTENCE_ID))
        assert payload.ConversationAnalysisModel.ConversationSentenceScoring is None

    def test_xml_strings_verbatim_other_values_trimmed(self) -> None:
        body = xml_body(xml_sentence(
            "<d2p1:Sentence>  two  spaces \n</d2p1:Sentence>"
            "<d2p1:SpeakerTypeID>\n 7 </d2p1:SpeakerTypeID><d2p1:IsAgent> false </d2p1:IsAgent>"
            "<d2p1:ExtraInfo><![CDATA[<b>&</b>]]> &amp; &#233;</d2p1:ExtraInfo>"
        ))
        sentence = decode_payload(body, XML).ConversationAnalysisModel.ConversationSentences[0]
        assert sentence.Sentence == "  two  spaces \n"
        assert (sentence.SpeakerTypeID, sentence.IsAgent) == (7, False)
        assert sentence.ExtraInfo == "<b>&</b> & é"


class TestUnknownFieldsIgnored:
    """Fields and elements the Structs do not know are skipped, whatever they hold."""

    def test_json(self) -> None:
        body = json_body({"NewList": [{"a": [1, {"b": None}]}], "ConversationSentences": [
            {"ID": SENTENCE_ID, "Brand new": {"x": [1, 2]}, "Sentence": "hi"}]}, Extra="x", Version=3)
        assert decode_payload(body, JSON).ConversationAnalysisModel.ConversationSentences[0].Sentence == "hi"

    def test_xml(self) -> None:
        body = xml_body(
            "<d2p1:NewList><d2p1:Thing><d2p1:ID>not-a-uuid</d2p1:ID></d2p1:Thing></d2p1:NewList>"
            + xml_sentence("<d2p1:Sentence>hi</d2p1:Sentence><d2p1:Mood><x>NaN</x></d2p1:Mood>"),
            rest="<Extra>1</Extra><!-- a comment --><?some-pi x?>",
        )
        assert decode_payload(body, XML).ConversationAnalysisModel.ConversationSentences[0].Sentence == "hi"

    def test_xml_list_items_whatever_their_tag(self) -> None:
        body = XML_SAMPLE.replace(b"ConversationSentenceModel>", b"Anything>")
        assert decode_payload(body, XML) == decode_payload(XML_SAMPLE, XML)


class TestRequiredIds:
    """A missing or null ID fails with the exact path of the item."""

    PATH = "$.ConversationAnalysisModel.ConversationSentences[1]"

    @pytest.mark.parametrize("item", [{"Sentence": "x"}, {"ID": None}])
    def test_json(self, item: dict[str, Any]) -> None:
        reason = rejected(json_body({"ConversationSentences": [{"ID": SENTENCE_ID}, item]}), JSON)
        assert self.PATH in reason and "ID" in reason

    @pytest.mark.parametrize("item", ["<d2p1:Sentence>x</d2p1:Sentence>", '<d2p1:ID i:nil="true"/>'])
    def test_xml(self, item: str) -> None:
        body = xml_body(
            "<d2p1:ConversationSentences>"
            f"<d2p1:ConversationSentenceModel><d2p1:ID>{SENTENCE_ID}</d2p1:ID></d2p1:ConversationSentenceModel>"
            f"<d2p1:ConversationSentenceModel>{item}</d2p1:ConversationSentenceModel>"
            "</d2p1:ConversationSentences>"
        )
        reason = rejected(body, XML)
        assert self.PATH in reason and "ID" in reason

    def test_analysis_id(self) -> None:
        assert "`$.ConversationAnalysisModel`" in rejected(b'{"ConversationAnalysisModel": {}}', JSON)
        assert "$.JobStatus.JobID" in rejected(b'{"JobStatus": {"JobID": null}}', JSON)

    def test_nil_list_item(self) -> None:
        body = xml_body('<d2p1:ConversationSentences><d2p1:X i:nil="true"/></d2p1:ConversationSentences>')
        assert "$.ConversationAnalysisModel.ConversationSentences[0]" in rejected(body, XML)


class TestTimestamps:
    """Offsets are kept, Z is UTC, no offset is taken as UTC, 7 fractional digits are truncated."""

    CASES = (
        ("2025-12-06T05:17:57.308584+00:00", SAMPLE_TIME),
        ("2025-12-06T07:17:57.308584+02:00", SAMPLE_TIME),
        ("2025-12-06T05:17:57.308584Z", SAMPLE_TIME),
        ("2025-12-06T05:17:57.308584", SAMPLE_TIME),
        ("2025-12-06T05:17:57.3085841", SAMPLE_TIME),  # .NET ticks: 7 digits, the 7th truncated
        ("2025-12-06T05:17:57.3085849-00:00", SAMPLE_TIME),  # never rounded (see test_edge_dates)
        ("2025-12-06T05:17:57", SAMPLE_TIME.replace(microsecond=0)),
    )

    @pytest.mark.parametrize("text, expected", CASES)
    def test_json(self, text: str, expected: datetime.datetime) -> None:
        got = decode_payload(json_body({"DateCreated": text}), JSON).ConversationAnalysisModel.DateCreated
        assert got == expected and got.utcoffset() is not None

    @pytest.mark.parametrize("text, expected", CASES)
    def test_xml(self, text: str, expected: datetime.datetime) -> None:
        body = xml_body(f"<d2p1:DateCreated>{text}</d2p1:DateCreated>")
        got = decode_payload(body, XML).ConversationAnalysisModel.DateCreated
        assert got == expected and got.utcoffset() is not None

    def test_offset_kept(self) -> None:
        got = decode_payload(json_body({"DateCreated": "2025-12-06T07:17:57+02:00"}), JSON)
        assert got.ConversationAnalysisModel.DateCreated.utcoffset() == datetime.timedelta(hours=2)

    @pytest.mark.parametrize("body, content_type", [(JSON_SAMPLE, JSON), (XML_SAMPLE, XML)])
    def test_every_datetime_field_naive_becomes_utc(self, body: bytes, content_type: str) -> None:
        naive = body.replace(b"05:17:57.308584+00:00", b"05:17:57.308584")
        assert naive != body
        payload = decode_payload(naive, content_type)
        found = list(datetimes(payload))
        assert len(found) == 1 + 2 + 2 * 2 + 2  # analysis, sentences, scorings (2 each), topics
        assert all(d == SAMPLE_TIME and d.tzinfo is UTC for d in found)
        assert payload == decode_payload(body, content_type)

    def test_one_naive_item_among_aware_ones(self) -> None:
        sentences = [{"ID": SENTENCE_ID, "DateCreated": "2025-12-06T05:17:57.308584+00:00"},
                     {"ID": SENTENCE_ID, "DateCreated": None},
                     {"ID": SENTENCE_ID, "DateCreated": "2025-12-06T05:17:57.308584"}]
        payload = decode_payload(json_body({"ConversationSentences": sentences}), JSON)
        got = [s.DateCreated for s in payload.ConversationAnalysisModel.ConversationSentences]
        assert got == [SAMPLE_TIME, None, SAMPLE_TIME] and got[2].tzinfo is UTC

    @pytest.mark.parametrize("text", ["\\/Date(1764998277308+0000)\\/", "/Date(1764998277308)/",
                                      "\\/Date(1764998277308-0500)\\/"])
    def test_legacy_dotnet_json_date(self, text: str) -> None:
        body = b'{"ConversationAnalysisModel": {"ID": "%s", "DateCreated": "%s"}}' % (
            ANALYSIS_ID.encode(), text.encode())
        got = decode_payload(body, JSON).ConversationAnalysisModel.DateCreated
        assert got == SAMPLE_TIME.replace(microsecond=308000)

    def test_legacy_form_only_for_datetime_fields(self) -> None:
        body = json_body({"ConversationText": "/Date(1764998277308)/"})
        assert decode_payload(body, JSON).ConversationAnalysisModel.ConversationText == "/Date(1764998277308)/"
        assert "DateCreated" in rejected(json_body({"DateCreated": "/Date(99999999999999999)/"}), JSON)

    @pytest.mark.parametrize("text", ["2025-12-06", "06/12/2025 05:17", "2025-13-06T05:17:57Z", ""])
    def test_invalid(self, text: str) -> None:
        assert "$.ConversationAnalysisModel.DateCreated" in rejected(json_body({"DateCreated": text}), JSON)
        body = xml_body(f"<d2p1:DateCreated>{text}</d2p1:DateCreated>")
        assert "$.ConversationAnalysisModel.DateCreated" in rejected(body, XML)


class TestJsonHostile:
    """Bodies that are not, or should not be, a JSON payload fail with a clear reason."""

    def test_utf8_bom_is_stripped(self) -> None:
        assert decode_payload(b"\xef\xbb\xbf" + JSON_SAMPLE, JSON) == decode_payload(JSON_SAMPLE, JSON)

    def test_utf16(self) -> None:
        assert "UTF-8" in rejected(JSON_SAMPLE.decode().encode("utf-16"), JSON)

    def test_invalid_utf8(self) -> None:
        assert "UTF-8" in rejected(json_body({"ConversationText": "x"}).replace(b'"x"', b'"\xff\xfe"'), JSON)

    @pytest.mark.parametrize("body", [b"", b"{", b"[]", b"null", b'{"Success": tru}', b"\x00" * 8, b"{}{}"])
    def test_malformed(self, body: bytes) -> None:
        assert rejected(body, JSON).startswith("invalid JSON payload")

    def test_depth_limit_exact(self) -> None:
        """The payload object is level 1; an unknown field may nest up to the limit."""
        def nested(levels: int) -> bytes:
            return b'{"X": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
        assert decode_payload(nested(MAX_JSON_DEPTH), JSON) == Payload()
        assert "nested deeper than 32 levels" in rejected(nested(MAX_JSON_DEPTH + 1), JSON)

    @pytest.mark.parametrize("body", [
        b'{"X": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"X": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        b"[" * 1_000_000,  # never closed
        b'{"X": [' + b"[1]," * 50 + b"{" * 40,  # unmatched openers after matched pairs
    ])
    def test_deep_nesting(self, body: bytes) -> None:
        assert "nested deeper than" in rejected(body, JSON)

    def test_brackets_inside_strings_do_not_count(self) -> None:
        text = "[{" * 500 + " [inaudible " * 100
        body = json_body({"ConversationSentences": [{"ID": SENTENCE_ID, "Sentence": text}] * 3})
        assert decode_payload(body, JSON).ConversationAnalysisModel.ConversationSentences[0].Sentence == text

    def test_deep_count_is_linear_with_escaped_quotes(self) -> None:
        """An unterminated string full of \\" must not make the exact count quadratic."""
        assert rejected(b'{"X": ' + b"[" * 40 + b'"' + b'\\"' * 200_000, JSON)

    @pytest.mark.parametrize("field, value, expected", [
        ("ConversationText", 5, "Expected `str | null`, got `int`"),
        ("ConversationSentences", {"ID": SENTENCE_ID}, "Expected `array | null`, got `object`"),
        ("ConversationSentenceScoring", [{"ID": SENTENCE_ID, "Joy": "5.1"}], "Expected `float | null`, got `str`"),
        ("ConversationSentences", [{"ID": "not-a-uuid"}], "Invalid UUID"),
        ("ConversationSentences", [{"ID": SENTENCE_ID, "SpeakerTypeID": 5.5}], "Expected `int | null`"),
        ("ConversationSentences", [{"ID": SENTENCE_ID, "IsAgent": "yes"}], "Expected `bool | null`"),
    ])
    def test_wrong_types(self, field: str, value: Any, expected: str) -> None:
        reason = rejected(json_body({field: value}), JSON)
        assert expected in reason and f"$.ConversationAnalysisModel.{field}" in reason

    @pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
    def test_non_finite_numbers(self, literal: bytes) -> None:
        body = json_body({"ConversationSentenceScoring": [{"ID": SENTENCE_ID, "Joy": 1.5}]}).replace(b"1.5", literal)
        assert rejected(body, JSON).startswith("invalid JSON payload")

    def test_nul(self) -> None:
        body = json_body({"ConversationSentences": [{"ID": SENTENCE_ID}, {"ID": SENTENCE_ID, "Sentence": "a\x00b"}]})
        assert b"\\u0000" in body
        reason = rejected(body, JSON)
        assert "NUL" in reason and "$.ConversationAnalysisModel.ConversationSentences[1].Sentence" in reason

    def test_nul_in_an_ignored_field_and_escaped_backslash_are_fine(self) -> None:
        body = json_body({"Unknown": "\x00", "ConversationText": "\\u0000"})
        assert decode_payload(body, JSON).ConversationAnalysisModel.ConversationText == "\\u0000"

    @pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 10**30])
    def test_integer_out_of_range(self, value: int) -> None:
        items = [{"ID": SENTENCE_ID, "SpeakerTypeID": 1}, {"ID": SENTENCE_ID, "SpeakerTypeID": value}]
        reason = rejected(json_body({"ConversationSentences": items}), JSON)
        assert "out of range" in reason
        assert "$.ConversationAnalysisModel.ConversationSentences[1].SpeakerTypeID" in reason

    @pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 0])
    def test_integer_bounds(self, value: int) -> None:
        body = json_body({"ConversationSentences": [{"ID": SENTENCE_ID, "SpeakerTypeID": value}]})
        assert decode_payload(body, JSON).ConversationAnalysisModel.ConversationSentences[0].SpeakerTypeID == value


def utf16(text: str) -> bytes:
    """UTF-16 with a byte order mark: not caught by the UTF-8 pre-scan, so the parser sees it."""
    return text.encode("utf-16")


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10))
    + "]><lolz>&lol9;</lolz>"
)
QUADRATIC = f'<!DOCTYPE q [<!ENTITY a "{"x" * 50_000}">]><q>{"&a;" * 50_000}</q>'
QUADRATIC_ATTRIBUTE = f'<!DOCTYPE q [<!ENTITY a "{"x" * 50_000}">]><q b="{"&a;" * 50_000}"/>'


class TestXmlHostile:
    """DTDs, entity bombs and external entities are refused before harm; bad values name their path."""

    @pytest.mark.parametrize("encode", [str.encode, utf16], ids=["utf8", "utf16"])
    @pytest.mark.parametrize("doc", [BILLION_LAUGHS, QUADRATIC, QUADRATIC_ATTRIBUTE],
                             ids=["billion-laughs", "quadratic", "quadratic-attribute"])
    def test_entity_bombs(self, doc: str, encode: Any) -> None:
        reason = rejected(encode(doc), XML)
        assert reason.startswith("invalid XML payload")
        if encode is str.encode:  # refused by the bytes scan, before the parser saw it
            assert "DOCTYPE" in reason
        else:  # the parser's limits stop it, or the DOCTYPE check after it
            assert "DOCTYPE" in reason or "amplification" in reason

    @pytest.mark.parametrize("encode", [str.encode, utf16], ids=["utf8", "utf16"])
    def test_xxe_file(self, encode: Any, tmp_path: Path) -> None:
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP-SECRET-CONTENT")
        doc = f'<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><PayLoadSample><Success>&x;</Success></PayLoadSample>'
        reason = rejected(encode(doc), XML)
        assert "DOCTYPE" in reason and "TOP-SECRET" not in reason

    @pytest.mark.parametrize("doc", [
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file://{fifo}">]><r>&x;</r>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "file://{fifo}"> %p;]><r/>',
        '<!DOCTYPE r SYSTEM "file://{fifo}"><r/>',
    ], ids=["entity", "parameter-entity", "external-dtd"])
    def test_external_files_are_never_opened(self, doc: str, tmp_path: Path) -> None:
        """Opening a FIFO with no writer blocks: a decode that returns never opened it."""
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        outcome: list[BaseException] = []

        def decode() -> None:
            try:
                decode_payload(utf16(doc.format(fifo=fifo)), XML)
            except BaseException as e:  # noqa: BLE001 - reported to the test thread
                outcome.append(e)

        thread = threading.Thread(target=decode, daemon=True)
        thread.start()
        thread.join(FAST)
        if thread.is_alive():  # unblock the reader before failing, so nothing hangs
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(FAST)
            pytest.fail("the parser opened an external file")
        assert len(outcome) == 1 and isinstance(outcome[0], PayloadDecodeError)
        assert "DOCTYPE" in str(outcome[0])

    @pytest.mark.parametrize("encode", [str.encode, utf16], ids=["utf8", "utf16"])
    @pytest.mark.parametrize("doc", [
        '<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/entity">]><r>&x;</r>',
        '<!DOCTYPE r SYSTEM "http://127.0.0.1:{port}/external.dtd"><r/>',
        '<!DOCTYPE r PUBLIC "-//X//DTD X//EN" "http://127.0.0.1:{port}/public.dtd"><r/>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/pe"> %p;]><r/>',
    ], ids=["entity", "external-dtd", "public-dtd", "parameter-entity"])
    def test_no_network(self, doc: str, encode: Any) -> None:
        """No request reaches a local server. (The libxml2 2.14 bundled with lxml 6 has no HTTP
        client at all, so this guards builds linked to an older libxml2.)"""
        requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'<!ENTITY x "fetched">')

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        try:
            reason = rejected(encode(doc.format(port=server.server_address[1])), XML)
        finally:
            server.shutdown()
            server.server_close()
        assert "DOCTYPE" in reason and requests == []

    def test_utf16_doctype_is_caught_after_parsing(self) -> None:
        """Bytes scans miss a UTF-16 DOCTYPE; the docinfo check after parsing does not."""
        body = utf16("<!DOCTYPE PayLoadSample>" + XML_SAMPLE.decode())
        assert b"<!DOCTYPE" not in body
        assert "DOCTYPE" in rejected(body, XML)

    def test_harmless_doctype_is_refused_too(self) -> None:
        assert "DOCTYPE" in rejected(b"<!DOCTYPE PayLoadSample>" + XML_SAMPLE, XML)

    def test_deep_nesting(self) -> None:
        reason = rejected(xml_body("<d2p1:X>" * 300 + "</d2p1:X>" * 300), XML)
        assert "depth" in reason

    def test_deep_but_allowed_unknown_element_is_skipped(self) -> None:
        body = xml_body("<d2p1:X>" * 200 + "</d2p1:X>" * 200)
        assert uuid.UUID(ANALYSIS_ID) == decode_payload(body, XML).ConversationAnalysisModel.ID

    @pytest.mark.parametrize("body", [
        XML_SAMPLE.replace(b"sample string 2", b"sample \xff string"),
        XML_SAMPLE.replace(b"sample string 2", b"a&#0;b"),
        XML_SAMPLE.replace(b"sample string 2", b"a\x00b"),
        XML_SAMPLE.replace(b"sample string 2", b"a&#xD800;b"),
        XML_SAMPLE.replace(b"sample string 2", b"&undefined;"),
        XML_SAMPLE[:-20], b"", b"<", b"not xml", b"<a></b>",
    ], ids=["invalid-utf8", "nul-ref", "nul-raw", "surrogate-ref", "undefined-entity", "truncated",
            "empty", "lt", "text", "mismatched"])
    def test_malformed(self, body: bytes) -> None:
        assert rejected(body, XML).startswith("invalid XML payload")

    SCORE = b"<d2p1:Score_Performance>5.1</d2p1:Score_Performance>"
    SCORE_PATH = "$.ConversationAnalysisModel.ConversationSentenceScoring[0].Score_Performance"

    @pytest.mark.parametrize("value", [b"NaN", b"nan", b"INF", b"-INF", b"+inf", b"Infinity", b" -Infinity "])
    def test_non_finite_numbers(self, value: bytes) -> None:
        body = XML_SAMPLE.replace(self.SCORE, self.SCORE.replace(b"5.1", value), 1)
        reason = rejected(body, XML)
        assert "non-finite" in reason and self.SCORE_PATH in reason

    def test_overflowing_number(self) -> None:
        body = XML_SAMPLE.replace(self.SCORE, self.SCORE.replace(b"5.1", b"1e999"), 1)
        assert self.SCORE_PATH in rejected(body, XML)

    @pytest.mark.parametrize("value, expected", [
        (b"abc", "Expected `float | null`, got `str`"),
        (b"<x>5.1</x>", "Expected `float | null`, got `object`"),  # markup where a value belongs
        (b"5,1", "Expected `float | null`, got `str`"),
    ])
    def test_wrong_values(self, value: bytes, expected: str) -> None:
        body = XML_SAMPLE.replace(self.SCORE, self.SCORE.replace(b"5.1", value), 1)
        reason = rejected(body, XML)
        assert expected in reason and self.SCORE_PATH in reason

    def test_nul_text_impossible_in_xml(self) -> None:
        """XML 1.0 has no way to write NUL: the parser refuses it, so no payload carries one."""
        assert "0" in rejected(xml_body("<d2p1:ConversationText>&#x0;</d2p1:ConversationText>"), XML)

    def test_integer_out_of_range(self) -> None:
        body = xml_body(xml_sentence("<d2p1:SpeakerTypeID>4294967296</d2p1:SpeakerTypeID>"))
        assert "$.ConversationAnalysisModel.ConversationSentences[0].SpeakerTypeID" in rejected(body, XML)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The samples cut, spliced and overwritten with arbitrary bytes: near-valid bodies."""
    body = bytearray(draw(st.sampled_from([JSON_SAMPLE, XML_SAMPLE])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        body[at:at + draw(st.integers(0, 64))] = draw(st.binary(max_size=32) | st.sampled_from(
            [b"<!DOCTYPE x>", b"[" * 40, b"\\u0000", b'i:nil="true"', b"NaN", b"&#0;", b"\xef\xbb\xbf"]))
    return bytes(body)


CONTENT_TYPES = st.sampled_from([JSON, XML, "text/json; charset=utf-16", "text/xml; charset=utf-16", "text/plain"])
PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


class TestOnlyPayloadDecodeError:
    """Whatever the bytes, decode_payload returns a tz-aware Payload or raises PayloadDecodeError."""

    @staticmethod
    def check(body: bytes, content_type: str) -> None:
        try:
            payload = decode_payload(body, content_type)
        except PayloadDecodeError as e:
            assert str(e) and "\n" not in str(e)
        else:
            assert isinstance(payload, Payload)
            assert all(d.tzinfo is not None for d in datetimes(payload))

    @PROPERTY
    @given(body=st.binary(max_size=2048), content_type=CONTENT_TYPES)
    def test_arbitrary_bytes(self, body: bytes, content_type: str) -> None:
        self.check(body, content_type)

    @PROPERTY
    @given(body=mutated(), content_type=CONTENT_TYPES)
    def test_mutated_samples(self, body: bytes, content_type: str) -> None:
        self.check(body, content_type)

    @PROPERTY
    @given(text=st.text(max_size=200))
    def test_any_text_in_json(self, text: str) -> None:
        """Any text, escaped as JSON encoders do, comes back unchanged; only NUL is refused."""
        body = json_body({"ConversationText": text})
        if "\x00" in text:
            assert "NUL" in rejected(body, JSON)
        else:
            assert decode_payload(body, JSON).ConversationAnalysisModel.ConversationText == text

    @PROPERTY
    @given(text=st.text(max_size=200))
    def test_any_text_in_xml(self, text: str) -> None:
        """Text with only XML characters comes back unchanged; any other is refused by the parser."""
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace("\r", "&#13;")
        body = xml_body(f"<d2p1:ConversationText>{escaped}</d2p1:ConversationText>")
        if all(c in "\t\n\r" or "\x20" <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"
               for c in text):
            assert decode_payload(body, XML).ConversationAnalysisModel.ConversationText == text
        else:
            assert rejected(body, XML).startswith("invalid XML payload")
