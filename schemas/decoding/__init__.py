"""Turn a callback body (JSON or .NET DataContract XML) into a ``Payload``.

The body comes from an unauthenticated-until-verified HTTP request and ends up
in COPY statements, so this module is the one place that decides whether bytes
are a payload, and it fails in exactly one way: ``PayloadDecodeError`` with a
one-line reason. The worker can then dead-letter the message instead of
retrying it forever, and never crash on it.

Beyond "parses and matches the Structs", a decoded payload is also storable:
no NUL in strings (PostgreSQL text refuses it), datetimes always tz-aware
(naive vendor timestamps are UTC), integers fit the ``integer`` columns, no
NaN/Infinity from XML. Each check is a C-level scan on the common path, so an
ordinary body pays little for them (the JSON depth scan, the largest, is about
a fifth of msgspec's own decode time).

One module per job: json_body and xml_body decode, storable checks, plans are
computed once from the Structs, errors is the one way all of them fail.
"""

from __future__ import annotations

from schemas.decoding.errors import PayloadDecodeError
from schemas.decoding.errors import error as _error
from schemas.decoding.json_body import MAX_JSON_DEPTH, decode_json
from schemas.decoding.storable import stored as _stored
from schemas.decoding.xml_body import decode_xml, parse_xml
from schemas.payload import Payload

__all__ = ["MAX_JSON_DEPTH", "PayloadDecodeError", "decode_payload", "parse_xml"]


def decode_payload(body: bytes, content_type: str | None) -> Payload:
    """Decode ``body`` according to ``content_type``; raise only PayloadDecodeError."""
    media = (content_type or "").partition(";")[0].strip().lower()
    try:
        if media in ("application/json", "text/json") or media.endswith("+json"):
            return _stored(decode_json(body))
        if media in ("application/xml", "text/xml") or media.endswith("+xml"):
            return _stored(decode_xml(body, content_type or ""))
    except PayloadDecodeError:
        raise
    except Exception as e:  # the contract: nothing else escapes, for any input
        raise _error(f"undecodable body ({type(e).__name__}: {e})") from e
    raise _error(f"unsupported content type {content_type!r} (expected JSON or XML)")
