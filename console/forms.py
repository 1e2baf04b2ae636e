"""Query strings and forms into the selections ops and the ledger understand, with errors in words.

The dead-letter selectors are the ``dlq`` commands' own (ops.selection): the
same parsing of times and ids, the same ``Selector``.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping
from typing import Any

from console.ledger import Cursor, LedgerFilter
from ops.selection import Selector, normalise_id, parse_when
from store.audit import AuditFilter
from store.outcomes import RECORDED as OUTCOMES

# The fields of a dead-letter selection, as forms and links carry them.
SELECTOR_FIELDS = ("ids", "reason", "since", "until", "limit", "all")
AUDIT_FIELDS = ("user", "event", "action", "since", "until")
AUDITED_ACTIONS = ("replay", "purge", "reprocess", "prune")
LEDGER_FIELDS = ("message_id", "analysis_id", "job_id", "outcome", "content_type", "since", "until")
MAX_LIMIT = 1_000_000
# ASCII digits only, and few: str.isdigit() takes "²", which int() refuses.
_WHOLE = re.compile(r"[0-9]{1,7}")
_DIGITS = re.compile(r"[0-9]{1,18}")  # a bigint


class FormError(ValueError):
    """A field the operator filled in that we cannot use; the message names it."""


def _typed(data: Mapping[str, Any], name: str) -> str:
    """The field as typed (stripped), to put back into a form; a file or a missing field is empty."""
    value = data.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _text(data: Mapping[str, Any], name: str) -> str:
    """The field, to search with: a NUL can be neither stored nor matched by PostgreSQL, so it is refused."""
    text = _typed(data, name)
    if "\x00" in text:
        raise FormError(f"{name}: a NUL character cannot be searched for")
    return text


def _uuid(data: Mapping[str, Any], name: str, label: str) -> uuid.UUID | None:
    text = _text(data, name)
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise FormError(f"{label}: {text!r} is not a UUID") from None


def _when(data: Mapping[str, Any], name: str, label: str) -> Any:
    text = _text(data, name)
    if not text:
        return None
    try:
        return parse_when(text)
    except ValueError as e:
        raise FormError(f"{label}: {e}") from None


def ledger_filter(data: Mapping[str, Any]) -> LedgerFilter:
    outcome = _text(data, "outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise FormError(f"outcome: must be one of {', '.join(OUTCOMES)}")
    return LedgerFilter(
        message_id=_uuid(data, "message_id", "message id"),
        analysis_id=_uuid(data, "analysis_id", "analysis id"),
        job_id=_uuid(data, "job_id", "job id"),
        outcome=outcome,
        content_type=_text(data, "content_type") or None,
        since=_when(data, "since", "since"),
        until=_when(data, "until", "until"),
    )


def cursor(data: Mapping[str, Any]) -> Cursor | None:
    text = _text(data, "after")
    if not text:
        return None
    try:
        return Cursor.decode(text)
    except (ValueError, OverflowError):
        raise FormError("that page link is damaged; start from the first page") from None


def selector(data: Mapping[str, Any]) -> Selector:
    """A dead-letter selection: ids (spaces or commas between), reason, since, until, limit, all."""
    ids = frozenset(normalise_id(i) for i in re.split(r"[\s,]+", _text(data, "ids")) if i)
    limit_text = _text(data, "limit")
    limit = None
    if limit_text:
        if not _WHOLE.fullmatch(limit_text) or not 0 < int(limit_text) <= MAX_LIMIT:
            raise FormError(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    return Selector(
        ids=ids,
        reason=_text(data, "reason") or None,
        since=_when(data, "since", "since"),
        until=_when(data, "until", "until"),
        every=_text(data, "all") in ("1", "on", "yes"),
        limit=limit,
    )


def selector_fields(data: Mapping[str, Any]) -> dict[str, str]:
    """The selection as it was typed, to put back into forms and links."""
    return {name: _typed(data, name) for name in SELECTOR_FIELDS if _typed(data, name)}


def ledger_fields(data: Mapping[str, Any]) -> dict[str, str]:
    return {name: _typed(data, name) for name in LEDGER_FIELDS if _typed(data, name)}


def describe_selector(s: Selector) -> dict[str, Any]:
    """The selection as the audit log records it."""
    return {
        "ids": sorted(s.ids), "reason": s.reason,
        "since": s.since.isoformat() if s.since else None, "until": s.until.isoformat() if s.until else None,
        "all": s.every, "limit": s.limit,
    }


def audit_filter(data: Mapping[str, Any]) -> tuple[AuditFilter, int | None]:
    """What the Audit page searches for, and where its page starts (entries before this id)."""
    before_text = _text(data, "before")
    if before_text and not _DIGITS.fullmatch(before_text):
        raise FormError("that page link is damaged; start from the first page")
    action = _text(data, "action") or None
    if action is not None and action not in AUDITED_ACTIONS:
        raise FormError(f"action: must be one of {', '.join(AUDITED_ACTIONS)}")
    return AuditFilter(
        username=_text(data, "user") or None,
        event=_text(data, "event") or None,
        action=action,
        since=_when(data, "since", "since"),
        until=_when(data, "until", "until"),
    ), int(before_text) if before_text else None


def audit_fields(data: Mapping[str, Any]) -> dict[str, str]:
    return {name: _typed(data, name) for name in AUDIT_FIELDS if _typed(data, name)}


def prune_choice(data: Mapping[str, Any]) -> tuple[datetime.datetime, bool]:
    """The archive page's form: bodies received before ``older_than`` (an age or a past time), and ``ledger``."""
    cutoff = _when(data, "older_than", "older than")
    if cutoff is None:
        raise FormError("older than: say how old, e.g. 90d, or an ISO 8601 time")
    if cutoff > datetime.datetime.now(datetime.UTC):
        raise FormError("older than: must be in the past (an age like 90d, or a past time)")
    return cutoff, _text(data, "ledger") in ("1", "on", "yes")
