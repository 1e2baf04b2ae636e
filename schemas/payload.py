"""The Flowscribe callback payload (``PayLoadSample``) as msgspec Structs.

Field names are the vendor's wire names, unchanged: this is a third party's
contract, not ours, and keeping its spelling (``Score_Performance``,
``LivingWithEldery``) makes every field traceable to the vendor's API page.
Database columns are the same names in snake_case (see ``schemas.naming``), in
the same order as the fields, so a decoded item becomes a COPY record without
any per-field mapping.

Options shared by every Struct (set once on ``VendorStruct``):

- unknown fields are ignored (msgspec's default): the vendor may add fields;
- ``IDs`` that key a table row are required and non-null, so a payload without
  them fails to decode with a message naming the exact path;
- everything else defaults to ``None`` (or an empty list), because the vendor
  sends ``null`` / ``i:nil="true"`` or omits fields it has no value for;
- ``frozen`` and ``gc=False``: decoded payloads are read-only values holding no
  reference cycles, which makes decoding cheaper. Each subclass says ``frozen=True``
  again: msgspec inherits it, but type checkers would take the subclass for mutable.
"""

from __future__ import annotations

import datetime
import uuid

import msgspec

__all__ = [
    "ConversationAnalysis",
    "JobStatus",
    "Payload",
    "Sentence",
    "SentenceEntity",
    "SentenceIntent",
    "SentenceKeyword",
    "SentenceScoring",
    "SentenceTopic",
    "VendorStruct",
]


class VendorStruct(msgspec.Struct, frozen=True, gc=False):
    """Base of every payload Struct (see the module docstring for the options)."""


class JobStatus(VendorStruct, frozen=True):
    JobID: uuid.UUID
    Success: bool | None = None
    ErrorMsg: str | None = None


class SentenceEntity(VendorStruct, frozen=True):
    ID: uuid.UUID
    DictationID: uuid.UUID | None = None
    SentenceID: uuid.UUID | None = None
    EntityName: str | None = None
    Confidence: float | None = None
    SpeakerLabel: str | None = None
    IsAgent: bool | None = None


class SentenceIntent(VendorStruct, frozen=True):
    ID: uuid.UUID
    DictationID: uuid.UUID | None = None
    SentenceID: uuid.UUID | None = None
    Intent: str | None = None
    Confidence: float | None = None
    SpeakerLabel: str | None = None
    IsAgent: bool | None = None


class SentenceKeyword(VendorStruct, frozen=True):
    ID: uuid.UUID
    DictationID: uuid.UUID | None = None
    SentenceID: uuid.UUID | None = None
    Keyword: str | None = None
    Confidence: float | None = None
    SpeakerLabel: str | None = None
    IsAgent: bool | None = None


class Sentence(VendorStruct, frozen=True):
    ID: uuid.UUID
    AudioConversationID: uuid.UUID | None = None
    Sentence: str | None = None
    SpeakerLabel: str | None = None
    SpeakerTypeID: int | None = None
    IsAgent: bool | None = None
    DateCreated: datetime.datetime | None = None
    ExtraInfo: str | None = None


class SentenceScoring(VendorStruct, frozen=True):
    ID: uuid.UUID
    DictationID: uuid.UUID | None = None
    SentenceID: uuid.UUID | None = None
    AgentID: uuid.UUID | None = None
    Score_Performance: float | None = None
    Score_Empathy: float | None = None
    Score_Quality: float | None = None
    Score_Ownership: float | None = None
    Score_Compliments: float | None = None
    Score_Summary: float | None = None
    CustomerSatisfactionPercentage: float | None = None
    SilencePercentage: float | None = None
    ProblemResolutionPercentage: float | None = None
    CustomerEffortPercentage: float | None = None
    CustomerAverageRating: float | None = None
    WaitingTime: float | None = None
    CustomerQuestionsTime: float | None = None
    AgentTime: float | None = None
    StayingAtHome: bool | None = None
    TestedPositive: bool | None = None
    TestedNegative: bool | None = None
    LivingWithEldery: bool | None = None
    CustomersDissatisfiedPercentage: float | None = None
    Date: datetime.datetime | None = None
    DateUpdated: datetime.datetime | None = None
    CrossTalking: float | None = None
    Joy: float | None = None
    Negativity: float | None = None
    Anger: float | None = None
    Shouting: float | None = None
    Disgust: float | None = None
    Fear: float | None = None
    Sadness: float | None = None
    Relevance: float | None = None
    SentimentScore: float | None = None


class SentenceTopic(VendorStruct, frozen=True):
    ID: uuid.UUID
    DictationID: uuid.UUID | None = None
    SentenceID: uuid.UUID | None = None
    Topic: str | None = None
    Confidence: float | None = None
    SpeakerLabel: str | None = None
    IsAgent: bool | None = None
    Rank: float | None = None
    Duration: float | None = None
    TimeStamp: datetime.datetime | None = None
    StartSeconds: float | None = None
    EndSeconds: float | None = None


class ConversationAnalysis(VendorStruct, frozen=True):
    ID: uuid.UUID
    ConversationSentenceEntities: list[SentenceEntity] | None = None
    ConversationSentenceIntents: list[SentenceIntent] | None = None
    ConversationSentenceKeywords: list[SentenceKeyword] | None = None
    ConversationSentences: list[Sentence] | None = None
    ConversationSentenceScoring: list[SentenceScoring] | None = None
    ConversationSentenceTopics: list[SentenceTopic] | None = None
    ConversationText: str | None = None
    LanguageCode: str | None = None
    DateCreated: datetime.datetime | None = None


class Payload(VendorStruct, frozen=True):
    """One callback: ``PayLoadSample`` on the vendor's page."""

    Success: bool | None = None
    JobStatus: JobStatus | None = None
    ConversationAnalysisModel: ConversationAnalysis | None = None


# Which list of the analysis goes to which table; the single place that ties
# payload lists to table names (the migration creates the tables, a test checks
# that their columns match the Structs).
CHILD_TABLES: dict[str, tuple[str, type[VendorStruct]]] = {
    "ConversationSentences": ("sentences", Sentence),
    "ConversationSentenceEntities": ("sentence_entities", SentenceEntity),
    "ConversationSentenceIntents": ("sentence_intents", SentenceIntent),
    "ConversationSentenceKeywords": ("sentence_keywords", SentenceKeyword),
    "ConversationSentenceScoring": ("sentence_scorings", SentenceScoring),
    "ConversationSentenceTopics": ("sentence_topics", SentenceTopic),
}


# The XML namespace of each Struct's DataContract. A Struct's fields are child
# elements in its namespace, whatever prefix binds it (see the vendor's
# sample, schemas/samples/vendor-sample.xml); an element of the same local name
# in another namespace is not that field.
MODELS_NAMESPACE = "http://schemas.datacontract.org/2004/07/CSP.AI.Portal.Models"
COMMON_NAMESPACE = "http://schemas.datacontract.org/2004/07/CSP.AI.Portal.DataLayer.Common"
XML_NAMESPACES: dict[type[VendorStruct], str] = {
    Payload: MODELS_NAMESPACE,
    JobStatus: MODELS_NAMESPACE,
    ConversationAnalysis: COMMON_NAMESPACE,
    **{struct: COMMON_NAMESPACE for _table, struct in CHILD_TABLES.values()},
}
