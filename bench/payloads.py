"""Realistic Flowscribe callback bodies, deterministic from a seed, as JSON or DataContract XML.

A payload is built once as plain Python data (the vendor's field names and
order, JSON-ready values) and then rendered either way, so the JSON and the XML
of one seed carry the same values and decode to the same ``Payload``:

- JSON as the vendor's Json.NET sends it: compact, fields in the Structs' order;
- XML as .NET's DataContractSerializer writes it, exactly like
  ``schemas/samples/vendor-sample.xml``: the two namespaces, the ``d2p1`` prefix
  inside the analysis, elements in ordinal (alphabetical) order, ``i:nil`` for
  nulls, one element per line.

Unlike the vendor's sample, every item has its own ID, so nothing is dropped as
a repeat and each item becomes a row. The text is call-centre dialogue with some
non-ASCII and XML-special characters, nulls where the vendor has no value, and
numbers with the decimals the vendor sends.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
import uuid
from typing import Any
from xml.sax.saxutils import escape

__all__ = [
    "CONTENT_TYPES",
    "SIZES",
    "Size",
    "body",
    "build",
    "densest",
    "render",
    "rows_of",
    "to_json",
    "to_xml",
    "variant",
]

CONTENT_TYPES = {"json": "application/json", "xml": "application/xml"}


@dataclasses.dataclass(frozen=True, slots=True)
class Size:
    name: str
    sentences: int
    json_bytes: tuple[int, int]  # accepted range of the JSON body's size
    note: str


# Sentence counts chosen so the JSON lands near the nominal size (the XML of the
# same payload is about 1.9x larger: every name is written twice, with a prefix).
SIZES: dict[str, Size] = {
    "small": Size("small", 4, (5_000, 11_000), "~8 KB: a few sentences"),
    "typical": Size("typical", 120, (200_000, 300_000), "~250 KB: 120 sentences"),
    "large": Size("large", 950, (1_700_000, 2_400_000), "~2 MB: a long call"),
}

_SPEAKERS = (("Agent", 1, True), ("Customer", 2, False))

_AGENT_LINES = (
    "Thank you for calling Northwind Telecom, my name is {agent}, how can I help you today?",
    "I can see the account here, could you confirm the postcode and the date of birth for me?",
    "I'm sorry to hear that the connection keeps dropping in the evenings, let me run a line test.",
    "The test shows packet loss between the cabinet and your router, so it isn't your equipment.",
    "I've booked an engineer for Thursday between 8 and 1; you'll get a text the evening before.",
    "For the inconvenience I've applied a credit of £15.00 to your next bill, is that all right?",
    "Is there anything else I can help you with today, {customer}?",
    "Your contract ends on the 14th of March, after that the price goes to the standard rate.",
    "I understand, let me transfer you to the retentions team who can look at the options.",
    "Just to let you know, this call may be recorded for quality & training purposes.",
)
_CUSTOMER_LINES = (
    "Hi, yes, my broadband has been cutting out every night for about two weeks now.",
    "It's the one ending 4471, and the postcode is SW1A 2AA.",
    "I work from home so it's really frustrating, I've lost a few video calls because of it.",
    "I already restarted the router three times and it's still the same — nothing changes.",
    "Thursday morning is fine, will somebody call before they come?",
    "Okay, that's fair. Can you also tell me when my contract ends?",
    "Honestly I'm thinking of cancelling if this isn't sorted by next week.",
    "No, that's everything, thanks for your help, you've been great.",
    "The bill says <estimated> next to the usage, what does that mean?",
    "My daughter Zoë set up the account, but it's in my name, Müller with an umlaut.",
)
_ENTITIES = (
    "Northwind Telecom", "SW1A 2AA", "Thursday", "£15.00", "14th of March", "router", "account 4471",
    "Zoë Müller", "video call", "engineer visit", "AT&T", "broadband",
)
_INTENTS = (
    "report_fault", "verify_identity", "book_engineer", "request_credit", "contract_enquiry",
    "cancel_service", "billing_question", "greeting", "closing",
)
_KEYWORDS = (
    "connection", "dropping", "evening", "line test", "packet loss", "engineer", "credit", "contract",
    "cancel", "router", "bill", "estimated usage",
)
_TOPICS = ("Connectivity", "Billing", "Appointments", "Retention", "Identity & Security", "Small talk")
_AGENTS = ("Priya", "Tom", "Aoife", "José", "Mei", "Oluwaseun")
_CUSTOMERS = ("Mr Jones", "Ms Novak", "Mrs Müller", "Mr O'Brien", "Dr Haddad")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _when(base: datetime.datetime, seconds: float) -> str:
    return (base + datetime.timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def _num(rng: random.Random, low: float, high: float, digits: int = 2) -> float:
    return round(rng.uniform(low, high), digits)


def _maybe(rng: random.Random, value: Any, p_null: float) -> Any:
    return None if rng.random() < p_null else value


def build(size: str, seed: int) -> dict[str, Any]:
    """The payload of ``size`` for ``seed`` as JSON-ready data (same seed, same payload)."""
    spec = SIZES[size]
    rng = random.Random(f"{size}:{seed}")
    base = datetime.datetime(2025, 12, 6, 5, 17, 57, tzinfo=datetime.UTC) + datetime.timedelta(
        minutes=rng.randrange(0, 60 * 24 * 30)
    )
    dictation_id, conversation_id, agent_id = _uuid(rng), _uuid(rng), _uuid(rng)
    agent, customer = rng.choice(_AGENTS), rng.choice(_CUSTOMERS)
    sentences, scorings, entities, intents, keywords, topics, text = [], [], [], [], [], [], []
    clock = 0.0
    for i in range(spec.sentences):
        label, speaker_type, is_agent = _SPEAKERS[i % 2]
        lines = _AGENT_LINES if is_agent else _CUSTOMER_LINES
        line = rng.choice(lines).format(agent=agent, customer=customer)
        start, clock = clock, clock + _num(rng, 2.0, 9.0)
        sentence_id = _uuid(rng)
        text.append(f"{label}: {line}")
        sentences.append({
            "ID": sentence_id,
            "AudioConversationID": conversation_id,
            "Sentence": line,
            "SpeakerLabel": label,
            "SpeakerTypeID": speaker_type,
            "IsAgent": is_agent,
            "DateCreated": _when(base, start),
            "ExtraInfo": _maybe(rng, f'{{"channel":{speaker_type - 1},"words":{len(line.split())}}}', 0.3),
        })
        scores = {name: _num(rng, 0, 10) for name in (
            "Score_Performance", "Score_Empathy", "Score_Quality", "Score_Ownership", "Score_Compliments",
            "Score_Summary")}
        scorings.append({
            "ID": _uuid(rng),
            "DictationID": dictation_id,
            "SentenceID": sentence_id,
            "AgentID": agent_id if is_agent else None,
            **scores,
            "CustomerSatisfactionPercentage": _num(rng, 0, 100),
            "SilencePercentage": _num(rng, 0, 40),
            "ProblemResolutionPercentage": _num(rng, 0, 100),
            "CustomerEffortPercentage": _num(rng, 0, 100),
            "CustomerAverageRating": _num(rng, 1, 5, 1),
            "WaitingTime": _num(rng, 0, 30),
            "CustomerQuestionsTime": _num(rng, 0, 60),
            "AgentTime": _num(rng, 0, 60),
            "StayingAtHome": _maybe(rng, rng.random() < 0.5, 0.5),
            "TestedPositive": _maybe(rng, False, 0.8),
            "TestedNegative": _maybe(rng, True, 0.8),
            "LivingWithEldery": _maybe(rng, rng.random() < 0.2, 0.5),
            "CustomersDissatisfiedPercentage": _num(rng, 0, 100),
            "Date": _when(base, start),
            "DateUpdated": _maybe(rng, _when(base, clock + 30), 0.5),
            "CrossTalking": _num(rng, 0, 1, 3),
            "Joy": _num(rng, 0, 1, 3),
            "Negativity": _num(rng, 0, 1, 3),
            "Anger": _num(rng, 0, 1, 3),
            "Shouting": _num(rng, 0, 1, 3),
            "Disgust": _num(rng, 0, 1, 3),
            "Fear": _num(rng, 0, 1, 3),
            "Sadness": _num(rng, 0, 1, 3),
            "Relevance": _num(rng, 0, 1, 3),
            "SentimentScore": _num(rng, -1, 1, 3),
        })
        common = {"DictationID": dictation_id, "SentenceID": sentence_id}
        for _ in range(rng.randint(0, 2)):
            entities.append({"ID": _uuid(rng), **common, "EntityName": rng.choice(_ENTITIES),
                             "Confidence": _num(rng, 0.5, 1, 4), "SpeakerLabel": label, "IsAgent": is_agent})
        for _ in range(rng.randint(0, 1)):
            intents.append({"ID": _uuid(rng), **common, "Intent": rng.choice(_INTENTS),
                            "Confidence": _num(rng, 0.5, 1, 4), "SpeakerLabel": label, "IsAgent": is_agent})
        for _ in range(rng.randint(0, 2)):
            keywords.append({"ID": _uuid(rng), **common, "Keyword": rng.choice(_KEYWORDS),
                             "Confidence": _num(rng, 0.5, 1, 4), "SpeakerLabel": label, "IsAgent": is_agent})
        for rank in range(rng.randint(0, 1)):
            topics.append({"ID": _uuid(rng), **common, "Topic": rng.choice(_TOPICS),
                           "Confidence": _num(rng, 0.5, 1, 4), "SpeakerLabel": label, "IsAgent": is_agent,
                           "Rank": float(rank + 1), "Duration": round(clock - start, 2),
                           "TimeStamp": _when(base, start), "StartSeconds": round(start, 2),
                           "EndSeconds": round(clock, 2)})
    return {
        "Success": True,
        "JobStatus": {"JobID": _uuid(rng), "Success": True, "ErrorMsg": None},
        "ConversationAnalysisModel": {
            "ID": _uuid(rng),
            "ConversationSentenceEntities": entities,
            "ConversationSentenceIntents": intents,
            "ConversationSentenceKeywords": keywords,
            "ConversationSentences": sentences,
            "ConversationSentenceScoring": scorings,
            "ConversationSentenceTopics": topics,
            "ConversationText": "\n".join(text),
            "LanguageCode": "en-GB",
            "DateCreated": _when(base, 0),
        },
    }


def densest(seed: int, max_bytes: int) -> dict[str, Any]:
    """A valid payload of as many rows as fit in ``max_bytes`` of JSON: keywords with nothing but an ID.

    The worst case for a worker's memory per body byte (a row per ~55 bytes, as in
    the outside test that took a worker to 709 MiB with eight such callbacks);
    not what the vendor sends, what a body within the gateway's limit can hold.
    """
    rng = random.Random(f"densest:{seed}")
    payload = {"Success": True, "JobStatus": {"JobID": _uuid(rng), "Success": True, "ErrorMsg": None},
               "ConversationAnalysisModel": {"ID": _uuid(rng), "ConversationSentenceKeywords": []}}
    empty = len(to_json(payload))
    per_item = len(to_json({"ID": _uuid(rng)})) + 1  # and its comma
    payload["ConversationAnalysisModel"]["ConversationSentenceKeywords"] = [
        {"ID": _uuid(rng)} for _ in range((max_bytes - empty) // per_item)]
    return payload


def rows_of(payload: dict[str, Any]) -> int:
    """Rows the payload becomes when ingested: its items, the analysis, the job and the ledger row."""
    analysis = payload["ConversationAnalysisModel"]
    items = sum(len(v) for v in analysis.values() if isinstance(v, list))
    return items + 3


# --- JSON -------------------------------------------------------------------


def to_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# --- XML (.NET DataContractSerializer) -----------------------------------------

_NS_I = "http://www.w3.org/2001/XMLSchema-instance"
_NS_MODELS = "http://schemas.datacontract.org/2004/07/CSP.AI.Portal.Models"
_NS_COMMON = "http://schemas.datacontract.org/2004/07/CSP.AI.Portal.DataLayer.Common"
# The element name of one item of each list: the vendor's .NET class names.
_ITEM_ELEMENT = {
    "ConversationSentenceEntities": "ConversationSentenceEntityModel",
    "ConversationSentenceIntents": "ConversationSentenceIntentModel",
    "ConversationSentenceKeywords": "ConversationSentenceKeywordModel",
    "ConversationSentences": "ConversationSentenceModel",
    "ConversationSentenceScoring": "ConversationSentenceScoringModel",
    "ConversationSentenceTopics": "ConversationSentenceTopicModel",
}


def _xml_value(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form, as .NET's "R"
    return escape(str(value))


def _xml_fields(out: list[str], obj: dict[str, Any], prefix: str) -> None:
    # DataContract writes members in ordinal order of their names.
    for name in sorted(obj):
        value = obj[name]
        tag = f"{prefix}{name}"
        if value is None:
            out.append(f'<{tag} i:nil="true"/>')
        elif isinstance(value, list):
            out.append(f"<{tag}>")
            for item in value:
                item_tag = f"{prefix}{_ITEM_ELEMENT[name]}"
                out.append(f"<{item_tag}>")
                _xml_fields(out, item, prefix)
                out.append(f"</{item_tag}>")
            out.append(f"</{tag}>")
        elif isinstance(value, dict):
            out.append(f"<{tag}>")
            _xml_fields(out, value, prefix)
            out.append(f"</{tag}>")
        else:
            out.append(f"<{tag}>{_xml_value(value)}</{tag}>")


def to_xml(payload: dict[str, Any]) -> bytes:
    out = [f'<PayLoadSample xmlns:i="{_NS_I}" xmlns="{_NS_MODELS}">']
    for name in sorted(payload):
        value = payload[name]
        if name == "ConversationAnalysisModel" and value is not None:
            out.append(f'<ConversationAnalysisModel xmlns:d2p1="{_NS_COMMON}">')
            _xml_fields(out, value, "d2p1:")
            out.append("</ConversationAnalysisModel>")
        else:
            _xml_fields(out, {name: value}, "")
    out.append("</PayLoadSample>")
    return ("\n".join(out) + "\n").encode()


def render(payload: dict[str, Any], fmt: str) -> bytes:
    return to_json(payload) if fmt == "json" else to_xml(payload)


def body(size: str, seed: int, fmt: str = "json") -> bytes:
    """The body of ``size`` for ``seed``, in ``fmt`` ("json" or "xml")."""
    return render(build(size, seed), fmt)


def variant(template: bytes, payload: dict[str, Any], n: int) -> bytes:
    """``template`` (a rendered ``payload``) as a different analysis and job: new IDs, same rows.

    Child rows are keyed by (analysis_id, id), so a new analysis and job id make
    every row new to the database; a few hundred nanoseconds instead of
    building a whole payload, for load generators that send thousands.
    """
    analysis_id = payload["ConversationAnalysisModel"]["ID"].encode()
    job_id = payload["JobStatus"]["JobID"].encode()
    fresh = uuid.uuid5(uuid.NAMESPACE_OID, f"{analysis_id!r}:{n}")
    return template.replace(analysis_id, str(fresh).encode()).replace(
        job_id, str(uuid.uuid5(fresh, "job")).encode()
    )
