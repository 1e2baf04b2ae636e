"""The benchmark's payload generator: realistic, the vendor's XML form, deterministic."""

from __future__ import annotations

import json
import uuid

import pytest

from bench import payloads
from schemas.decoding import decode_payload
from store.rows import child_rows
from tests.support import JSON_SAMPLE, XML_SAMPLE

SEEDS = (0, 1, 7)


@pytest.fixture(scope="module", params=[(size, seed) for size in payloads.SIZES for seed in SEEDS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def generated(request: pytest.FixtureRequest) -> tuple[str, dict]:
    size, seed = request.param
    return size, payloads.build(size, seed)


class TestBodies:
    def test_json_and_xml_decode_to_the_same_payload(self, generated: tuple[str, dict]) -> None:
        """Both renderings of one payload become the very same Payload in the worker."""
        _, data = generated
        from_json = decode_payload(payloads.to_json(data), "application/json")
        from_xml = decode_payload(payloads.to_xml(data), "application/xml; charset=utf-8")
        assert from_json == from_xml
        assert from_json.ConversationAnalysisModel is not None

    def test_sizes_are_in_range(self, generated: tuple[str, dict]) -> None:
        """JSON bodies land in their size's range; the XML of the same payload is larger."""
        size, data = generated
        low, high = payloads.SIZES[size].json_bytes
        json_body, xml_body = payloads.to_json(data), payloads.to_xml(data)
        assert low <= len(json_body) <= high
        assert len(json_body) < len(xml_body) < 2.5 * len(json_body)

    def test_every_item_has_its_own_id(self, generated: tuple[str, dict]) -> None:
        """Nothing is deduplicated away: each item becomes a row (unlike the vendor's sample)."""
        _, data = generated
        analysis = decode_payload(payloads.to_json(data), "application/json").ConversationAnalysisModel
        assert analysis is not None
        ids = [analysis.ID]
        for attribute in payloads._ITEM_ELEMENT:
            items = getattr(analysis, attribute) or []
            assert len(child_rows(analysis, attribute)) == len(items)
            ids += [item.ID for item in items]
        assert len(set(ids)) == len(ids)
        assert payloads.rows_of(data) == len(ids) - 1 + 3  # items + analysis + job + ledger

    def test_has_nulls_and_text_that_needs_escaping(self) -> None:
        """Realistic enough to exercise i:nil, XML escaping and non-ASCII text."""
        xml_body = payloads.body("typical", 0, "xml")
        assert b'i:nil="true"/>' in xml_body
        assert b"&amp;" in xml_body and b"&lt;" in xml_body
        assert "ü".encode() in xml_body


class TestVendorForm:
    def test_xml_writer_reproduces_the_vendor_sample_exactly(self) -> None:
        """Fed the vendor's JSON sample, the XML writer gives the vendor's XML sample byte for byte."""
        assert payloads.to_xml(json.loads(JSON_SAMPLE)) == XML_SAMPLE


class TestDeterminism:
    @pytest.mark.parametrize("size", list(payloads.SIZES))
    def test_same_seed_same_bytes(self, size: str) -> None:
        for fmt in ("json", "xml"):
            assert payloads.body(size, 3, fmt) == payloads.body(size, 3, fmt)

    def test_different_seeds_differ(self) -> None:
        assert payloads.body("small", 1) != payloads.body("small", 2)

    def test_variant_is_a_new_analysis_with_the_same_rows(self) -> None:
        """Load generators' cheap copies: new analysis and job ids, same items, still decodable."""
        data = payloads.build("small", 5)
        for fmt, content_type in (("json", "application/json"), ("xml", "application/xml")):
            template = payloads.render(data, fmt)
            first, second = (payloads.variant(template, data, n) for n in (1, 2))
            assert first == payloads.variant(template, data, 1)
            a, b = (decode_payload(x, content_type) for x in (first, second))
            assert a.ConversationAnalysisModel.ID != b.ConversationAnalysisModel.ID
            assert a.JobStatus.JobID != b.JobStatus.JobID
            assert str(a.ConversationAnalysisModel.ID) != data["ConversationAnalysisModel"]["ID"]
            assert isinstance(a.ConversationAnalysisModel.ID, uuid.UUID)
            assert (a.ConversationAnalysisModel.ConversationSentences
                    == b.ConversationAnalysisModel.ConversationSentences)
