"""Which character encoding an XML body is read in, per RFC 7303 (section 3).

The byte order mark decides first; then the ``charset`` of the content type
(the gateway passes it on with the message's content type); then the body's
own encoding declaration; then UTF-8 (also for ``text/xml``: RFC 7303 dropped
RFC 3023's US-ASCII default). libxml2 by itself knows only the last two, so a
body without a declaration sent as ``charset=ISO-8859-1`` failed as invalid
UTF-8. When a charset and a declaration name different encodings, the body is
refused as ambiguous rather than read one way or the other.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["AmbiguousEncoding", "charset_of", "imposed_encoding"]

_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)  # UTF-32 marks start like UTF-16's
_CHARSET = re.compile(r';\s*charset\s*=\s*"?([^";\s]+)"?', re.IGNORECASE)
# An XML declaration's encoding, as read in an ASCII-compatible charset (the
# declaration itself is ASCII; the first 200 characters hold any real one).
_DECLARED = re.compile(r'<\?xml\s[^>]*?encoding\s*=\s*["\']([A-Za-z][A-Za-z0-9._-]*)["\']')


class AmbiguousEncoding(ValueError):
    """The content type's charset cannot be used, or contradicts the body's declaration."""


def charset_of(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a content type, if any."""
    m = _CHARSET.search(content_type or "")
    return m[1] if m else None


def imposed_encoding(body: bytes, charset: str | None) -> str | None:
    """The encoding the parser must be told, or None when it finds the right one itself."""
    if charset is None or body.startswith(_BOMS):
        return None
    wanted = _canonical(charset)
    if wanted is None:
        raise AmbiguousEncoding(f"unknown charset {charset[:40]!r} in the content type")
    head = body[:200].decode(wanted, errors="replace")
    declared = _DECLARED.match(head)
    if declared is not None:
        if (_canonical(declared[1]) or declared[1].lower()) != wanted:
            raise AmbiguousEncoding(
                f"ambiguous encoding: the content type says charset={charset[:40]},"
                f" the XML declaration says encoding={declared[1]}"
            )
        return None  # they agree: the parser reads the declaration
    return None if wanted == "utf-8" else charset


def _canonical(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None
