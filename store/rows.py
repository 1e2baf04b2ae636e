"""The table rows a decoded callback becomes."""

from __future__ import annotations

import msgspec

from schemas.message import Callback
from schemas.naming import snake_case
from schemas.payload import CHILD_TABLES, ConversationAnalysis, VendorStruct

# The PostgreSQL schema every table is in (store/migrations/).
SCHEMA = "flowscribe"


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
    "trace_id",  # migration 0009
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
    for row, item in zip(rows, items, strict=True):
        first.setdefault(item.ID.int, row)
    return list(first.values())
