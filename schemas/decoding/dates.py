"""Vendor timestamp text made exact for msgspec: the instant sent, or left for msgspec to refuse.

Two spellings need help before msgspec parses a datetime field:

- .NET writes up to seven fractional digits (ticks of 100 ns). msgspec rounds
  digits beyond the sixth, which moves ``DateTime.MaxValue``
  (``9999-12-31T23:59:59.9999999``) past year 9999, where it is refused, and
  every other value by up to a microsecond. We truncate to microseconds: the
  instant is never moved past what was sent.
- .NET's legacy ``/Date(ms[+hhmm])/`` (JSON writes it ``\\/Date(...)\\/``):
  milliseconds since the epoch in UTC; the offset only says which zone the
  sender was in.

A value outside Python's years 1-9999 in its own offset is left as it was, so
msgspec refuses it with the path of its field. This one module decides both
spellings, for JSON (over a whole body, only for datetime fields) and XML (one
element's text).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

__all__ = ["TICKS_HINT", "exact", "json_rewriter", "rewrite_json"]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

# Either spelling, as one value. Groups: ms (legacy), micro and offset (ticks).
_VALUE = (
    r"\\?/Date\((?P<ms>-?\d{1,18})(?:[+-]\d{4})?\)\\?/"
    r"|(?P<micro>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\d+(?P<offset>Z|[+-]\d\d:\d\d)?"
)
_TEXT = re.compile(rf"(?:{_VALUE})\Z")

# Seconds with more than six fractional digits somewhere in a body: msgspec
# would round them silently, so such a body is rewritten field by field. Of the
# spellings tried this scan was the cheapest (~0.1 ms on a 250 KB body, under a
# tenth of its decode; "T" is rarer than ":" or "." in a body).
TICKS_HINT = re.compile(rb"T\d\d:\d\d:\d\d\.\d{7}")


def exact(text: str) -> str:
    """``text`` as msgspec should parse it; unchanged unless it is one of the two spellings."""
    m = _TEXT.match(text)
    return text if m is None else _replacement(m[0], m["ms"], m["micro"], m["offset"])


def json_rewriter(keys: Iterable[str]) -> re.Pattern[bytes]:
    """A pattern for either spelling as the value of one of ``keys`` in a JSON body; see ``rewrite_json``."""
    names = b"|".join(re.escape(k.encode()) for k in sorted(keys))
    return re.compile(rb'("(?:%s)"\s*:\s*")(?:%s)"' % (names, _VALUE.encode()))


def rewrite_json(pattern: re.Pattern[bytes], body: bytes) -> bytes | None:
    """``body`` with every such value made exact, or None when nothing changed."""
    rewritten = pattern.sub(_json_value, body)
    return rewritten if rewritten != body else None


def _json_value(m: re.Match[bytes]) -> bytes:
    # Every group is ASCII (digits, signs, "T", "Z", "/", "\\"): latin-1 round-trips it.
    value = m[0][len(m[1]):-1].decode("latin-1")
    groups = [g.decode("latin-1") if g is not None else None for g in m.group("ms", "micro", "offset")]
    return m[1] + _replacement(value, *groups).encode("latin-1") + b'"'


def _replacement(original: str, ms: str | None, micro: str | None, offset: str | None) -> str:
    if micro is not None:
        return micro + (offset or "")
    assert ms is not None
    try:
        return (_EPOCH + datetime.timedelta(milliseconds=int(ms))).isoformat()
    except OverflowError:  # beyond years 1-9999: msgspec refuses the original, naming the field
        return original
