"""XML is read as its DataContract says, never guessed: a field only from its namespace, an
element twice or nil with content refused, and the HTTP charset honoured (RFC 7303)."""

from __future__ import annotations

import pytest

from schemas.decoding import decode_payload
from tests.support import XML_SAMPLE, eventually
from tests.test_decoding import ANALYSIS_ID, SENTENCE_ID, XML, rejected, xml_body, xml_sentence
from tests.test_pipeline import outcome_of, post

MODELS = "http://schemas.datacontract.org/2004/07/CSP.AI.Portal.Models"
COMMON = "http://schemas.datacontract.org/2004/07/CSP.AI.Portal.DataLayer.Common"
EVIL = 'xmlns:e="urn:evil"'


def analysis(body: bytes):
    return decode_payload(body, XML).ConversationAnalysisModel


class TestNamespaces:
    """A field is read only from an element in its contract's namespace, whatever the prefix."""

    def test_same_local_name_in_another_namespace_is_not_the_field(self) -> None:
        real = "<d2p1:ConversationText>real</d2p1:ConversationText>"
        evil = f"<e:ConversationText {EVIL}>EVIL</e:ConversationText>"
        assert analysis(xml_body(real + evil)).ConversationText == "real"
        assert analysis(xml_body(evil + real)).ConversationText == "real"
        assert analysis(xml_body(evil)).ConversationText is None  # like any unknown element

    def test_no_namespace_is_another_namespace(self) -> None:
        assert analysis(xml_body('<ConversationText xmlns="">none</ConversationText>')).ConversationText is None
        # The analysis's fields are in DataLayer.Common, not in the payload's namespace.
        assert analysis(xml_body("<ConversationText>models</ConversationText>")).ConversationText is None

    def test_in_a_nested_item_and_at_the_top(self) -> None:
        body = xml_body(xml_sentence(f"<e:Sentence {EVIL}>EVIL</e:Sentence><d2p1:Sentence>real</d2p1:Sentence>"),
                        rest=f"<e:Success {EVIL}>false</e:Success><Success>true</Success>")
        payload = decode_payload(body, XML)
        assert payload.ConversationAnalysisModel.ConversationSentences[0].Sentence == "real"
        assert payload.Success is True

    def test_list_item_in_another_namespace_is_not_an_item(self) -> None:
        body = xml_body(
            "<d2p1:ConversationSentences>"
            f"<d2p1:ConversationSentenceModel><d2p1:ID>{SENTENCE_ID}</d2p1:ID></d2p1:ConversationSentenceModel>"
            f"<e:ConversationSentenceModel {EVIL}><e:ID>{ANALYSIS_ID}</e:ID></e:ConversationSentenceModel>"
            "</d2p1:ConversationSentences>")
        assert [str(s.ID) for s in analysis(body).ConversationSentences] == [SENTENCE_ID]

    def test_any_prefix_or_default_namespace(self) -> None:
        expected = decode_payload(XML_SAMPLE, XML)
        assert decode_payload(XML_SAMPLE.replace(b"d2p1:", b"c:").replace(b"xmlns:d2p1=", b"xmlns:c="), XML) == expected
        body = (f'<m:PayLoadSample xmlns:m="{MODELS}"><m:ConversationAnalysisModel>'
                f'<ID xmlns="{COMMON}">{ANALYSIS_ID}</ID><c:ConversationText xmlns:c="{COMMON}">t</c:ConversationText>'
                '</m:ConversationAnalysisModel><m:Success>true</m:Success></m:PayLoadSample>').encode()
        payload = decode_payload(body, XML)
        assert (str(payload.ConversationAnalysisModel.ID), payload.ConversationAnalysisModel.ConversationText,
                payload.Success) == (ANALYSIS_ID, "t", True)

    def test_a_root_in_another_namespace_is_refused(self) -> None:
        """Not a payload of this contract at all (e.g. the vendor renamed its namespaces): refused, not
        stored as an empty callback."""
        renamed = XML_SAMPLE.replace(b"CSP.AI.Portal.Models", b"Vendor.V2.Models")
        assert "namespace" in rejected(renamed, XML)
        no_ns = XML_SAMPLE.replace(f' xmlns="{MODELS}"'.encode(), b"")
        assert "namespace" in rejected(no_ns, XML)

    def test_analysis_fields_in_a_renamed_namespace_are_unknown(self) -> None:
        renamed = XML_SAMPLE.replace(b"CSP.AI.Portal.DataLayer.Common", b"Vendor.V2.Common")
        assert "`$.ConversationAnalysisModel`" in rejected(renamed, XML)  # its ID is missing


class TestAmbiguous:
    """Two values where the contract has one, or nil with a value: refused with the path, not guessed."""

    @pytest.mark.parametrize("twice", [
        "<d2p1:ConversationText>a</d2p1:ConversationText><d2p1:ConversationText>b</d2p1:ConversationText>",
        "<d2p1:ConversationText>a</d2p1:ConversationText>"
        f'<c:ConversationText xmlns:c="{COMMON}">a</c:ConversationText>',
        '<d2p1:ConversationText i:nil="true"/><d2p1:ConversationText>b</d2p1:ConversationText>',
    ])
    def test_a_field_twice(self, twice: str) -> None:
        reason = rejected(xml_body(twice), XML)
        assert "ambiguous" in reason and "$.ConversationAnalysisModel.ConversationText" in reason

    def test_a_list_twice(self) -> None:
        reason = rejected(xml_body(xml_sentence("") + xml_sentence("")), XML)
        assert "ambiguous" in reason and "$.ConversationAnalysisModel.ConversationSentences" in reason

    def test_a_field_twice_in_an_item(self) -> None:
        reason = rejected(xml_body(xml_sentence(f"<d2p1:ID>{SENTENCE_ID}</d2p1:ID>")), XML)
        assert "ambiguous" in reason and "$.ConversationAnalysisModel.ConversationSentences[0].ID" in reason

    def test_a_top_level_field_twice(self) -> None:
        reason = rejected(xml_body(rest="<Success>true</Success><Success>false</Success>"), XML)
        assert "ambiguous" in reason and "$.Success" in reason

    @pytest.mark.parametrize("element, path", [
        ('<d2p1:SpeakerTypeID i:nil="true">7</d2p1:SpeakerTypeID>', "ConversationSentences[0].SpeakerTypeID"),
        ('<d2p1:Sentence i:nil="true">text</d2p1:Sentence>', "ConversationSentences[0].Sentence"),
        ('<d2p1:DateCreated i:nil="1">2025-12-06T05:17:57</d2p1:DateCreated>', "ConversationSentences[0].DateCreated"),
    ])
    def test_nil_with_content(self, element: str, path: str) -> None:
        reason = rejected(xml_body(xml_sentence(element)), XML)
        assert "ambiguous" in reason and f"$.ConversationAnalysisModel.{path}" in reason

    def test_nil_float_with_content(self) -> None:
        body = xml_body('<d2p1:ConversationSentenceScoring><d2p1:ConversationSentenceScoringModel>'
                        f'<d2p1:ID>{SENTENCE_ID}</d2p1:ID><d2p1:Joy i:nil="true">7.5</d2p1:Joy>'
                        '</d2p1:ConversationSentenceScoringModel></d2p1:ConversationSentenceScoring>')
        reason = rejected(body, XML)
        assert "ambiguous" in reason and "ConversationSentenceScoring[0].Joy" in reason

    def test_nil_structure_or_list_with_content(self) -> None:
        reason = rejected(xml_body(rest=f'<JobStatus i:nil="true"><JobID>{ANALYSIS_ID}</JobID></JobStatus>'), XML)
        assert "ambiguous" in reason and "$.JobStatus" in reason
        body = xml_body('<d2p1:ConversationSentences i:nil="true"><d2p1:ConversationSentenceModel>'
                        f'<d2p1:ID>{SENTENCE_ID}</d2p1:ID></d2p1:ConversationSentenceModel></d2p1:ConversationSentences>')
        assert "$.ConversationAnalysisModel.ConversationSentences" in rejected(body, XML)

    def test_nil_false_and_nil_with_only_whitespace_are_not_ambiguous(self) -> None:
        sentence = analysis(xml_body(xml_sentence(
            '<d2p1:Sentence i:nil="false">x</d2p1:Sentence><d2p1:ExtraInfo i:nil="true">  </d2p1:ExtraInfo>'
        ))).ConversationSentences[0]
        assert (sentence.Sentence, sentence.ExtraInfo) == ("x", None)

    def test_unknown_elements_may_repeat(self) -> None:
        evil = f"<e:ConversationText {EVIL}>a</e:ConversationText>"
        body = xml_body("<d2p1:New>1</d2p1:New><d2p1:New>2</d2p1:New>" + evil + evil)
        assert analysis(body).ConversationText is None


def latin1_body(declaration: str = "") -> bytes:
    text = "Müller paid £15 at the café"
    return declaration.encode() + xml_body(f"<d2p1:ConversationText>{text}</d2p1:ConversationText>").decode().encode(
        "latin-1")


class TestCharset:
    """RFC 7303: without an encoding declaration, the content type's charset says how to read the bytes."""

    TEXT = "Müller paid £15 at the café"

    @pytest.mark.parametrize("content_type", ["application/xml; charset=iso-8859-1", 'text/xml; charset="ISO-8859-1"',
                                              "application/xml;charset=latin1"])
    def test_charset_read_without_declaration(self, content_type: str) -> None:
        got = decode_payload(latin1_body(), content_type).ConversationAnalysisModel.ConversationText
        assert got == self.TEXT

    def test_declaration_agreeing_with_charset(self) -> None:
        body = latin1_body('<?xml version="1.0" encoding="ISO-8859-1"?>')
        assert analysis_text(body, "application/xml; charset=latin-1") == self.TEXT
        assert analysis_text(body, "application/xml") == self.TEXT

    def test_declaration_contradicting_charset_is_ambiguous(self) -> None:
        body = latin1_body('<?xml version="1.0" encoding="ISO-8859-1"?>')
        reason = rejected(body, "application/xml; charset=utf-8")
        assert "ambiguous" in reason and "utf-8" in reason.lower() and "iso-8859-1" in reason.lower()

    def test_utf8_charset_and_no_charset_read_utf8(self) -> None:
        body = xml_body(f"<d2p1:ConversationText>{self.TEXT}</d2p1:ConversationText>")
        assert analysis_text(body, "application/xml; charset=utf-8") == self.TEXT
        assert analysis_text(body, "text/xml") == self.TEXT  # RFC 7303: no US-ASCII default for text/xml

    def test_byte_order_mark_wins(self) -> None:
        body = "\ufeff".encode("utf-16-le") + xml_body(
            f"<d2p1:ConversationText>{self.TEXT}</d2p1:ConversationText>").decode().encode("utf-16-le")
        assert analysis_text(body, "application/xml; charset=iso-8859-1") == self.TEXT

    def test_a_wrong_label_is_honoured_not_second_guessed(self) -> None:
        assert rejected(XML_SAMPLE, "text/xml; charset=utf-16").startswith("invalid XML payload")

    def test_unknown_charset_refused(self) -> None:
        assert "charset" in rejected(latin1_body(), "application/xml; charset=x-no-such-thing")

    async def test_through_the_gateway(self, gateway, http, db, start_worker) -> None:
        start_worker()
        callback_id = await post(http, gateway, latin1_body(), "application/xml; charset=ISO-8859-1")
        assert await eventually(lambda: outcome_of(db, callback_id), what="the callback row") == "ingested"
        assert await db.fetchval("SELECT conversation_text FROM flowscribe.analyses") == self.TEXT


def analysis_text(body: bytes, content_type: str) -> str | None:
    return decode_payload(body, content_type).ConversationAnalysisModel.ConversationText
