"""A callback body for reading: pretty-printed as received when whole, cut when large.

Pretty-printing is ``ops.render.pretty_body``, the one ``dlq show`` uses
(hardened XML parser: no DTDs, no entities, no network). The result is text the
templates escape like any other value; a body is never served inline as what
it claims to be (see the download handlers).
"""

from __future__ import annotations

import dataclasses

from ops.render import pretty_body

SHOWN_CHARS = 256 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ShownBody:
    text: str
    size: int  # bytes received
    cut: bool  # the text shows only the start of the body


def shown(head: bytes, size: int, content_type: str | None, limit: int = SHOWN_CHARS) -> ShownBody:
    """``head`` is the whole body when ``len(head) == size``; otherwise only its start (shown raw)."""
    text = pretty_body(head, content_type) if len(head) == size else head.decode("utf-8", errors="replace")
    cut = len(head) < size or len(text) > limit
    return ShownBody(text[:limit], size, cut)
