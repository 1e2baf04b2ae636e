"""A decoded callback and the table rows it becomes."""

from __future__ import annotations

import dataclasses
import datetime
import uuid

import msgspec

from schemas.naming import snake_case
from schemas.payload import CHILD_TABLES, ConversationAnalysis, Payload, VendorStruct


@dataclasses.dataclass(slots=True)
class Callback:
    """One delivered message, decoded: what the store needs to decide and write."""

    id: uuid.UUID  # the gateway's message id
    received_at: datetime.datetime
    content_type: str
    body_sha256: str
    body: bytes
    payload: Payload
    reprocess: bool = False  # re-derive a stored callback's rows (see store.batch)

    @property
    def analysis(self) -> ConversationAnalysis | None:
        return self.payload.ConversationAnalysisModel

    @property
    def job_id(self) -> uuid.UUID | None:
        job = self.payload.JobStatus
        return job.JobID if job is not None else None

    @property
    def job_failed(self) -> bool:
        """Flowscribe reports failure, or sent no analysis to store."""
        job = self.payload.JobStatus
        return (
            self.payload.Success is False
            or (job is not None and job.Success is False)
            or self.analysis is None
        )

    @property
    def version(self) -> tuple[datetime.datetime, uuid.UUID]:
        """Order of versions of one analysis: received later wins; the id breaks ties."""
        return (self.received_at, self.id)


_astuple = msgspec.structs.astuple


def columns_of(struct: type[VendorStruct]) -> list[str]:
    return [snake_case(name) for name in struct.__struct_fields__]


# table -> (payload list attribute, COPY column list)
CHILD_COLUMNS: dict[str, tuple[str, list[str]]] = {
    table: (attribute, ["analysis_id", *columns_of(struct)])
    for attribute, (table, struct) in CHILD_TABLES.items()
}

CALLBACK_COLUMNS = [
    "id", "received_at", "content_type", "body_sha256", "body", "outcome", "analysis_id", "job_id",
]
ANALYSIS_COLUMNS = [
    "id", "job_id", "conversation_text", "language_code", "date_created", "received_at", "callback_id",
]


def analysis_row(callback: Callback) -> tuple[object, ...]:
    analysis = callback.analysis
    assert analysis is not None
    return (
        analysis.ID,
        callback.job_id,
        analysis.ConversationText,
        analysis.LanguageCode,
        analysis.DateCreated,
        callback.received_at,
        callback.id,
    )


def child_rows(analysis: ConversationAnalysis, attribute: str) -> list[tuple[object, ...]]:
    """Rows of one child table; an item repeated in the payload (same ID) is kept once, first wins."""
    items = getattr(analysis, attribute) or ()
    analysis_id = analysis.ID
    rows = [(analysis_id, *_astuple(item)) for item in items]
    # Keyed by the UUID's int: hashing a UUID object runs Python code, its int does not.
    # Distinct IDs are the rule, so check that first and dedupe only when needed.
    if len({item.ID.int for item in items}) == len(rows):
        return rows
    first: dict[int, tuple[object, ...]] = {}
    for row, item in zip(rows, items):
        first.setdefault(item.ID.int, row)
    return list(first.values())
