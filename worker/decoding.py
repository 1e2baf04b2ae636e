"""Turn a callback body (JSON or .NET DataContract XML) into a ``Payload``.

The body comes from an unauthenticated-until-verified HTTP request and ends up
in COPY statements, so this module is the one place that decides whether bytes
are a payload, and it fails in exactly one way: ``PayloadDecodeError`` with a
one-line reason. The worker can then dead-letter the message instead of
retrying it forever, and never crash on it.

Beyond "parses and matches the Structs", a decoded payload is also storable:
no NUL in strings (PostgreSQL text refuses it), datetimes always tz-aware
(naive vendor timestamps are UTC), integers fit the ``integer`` columns, no
NaN/Infinity from XML. Each of those checks is arranged to cost close to
nothing on an ordinary body; the tests measure it.
"""

from __future__ import annotations

import datetime
import re
import threading
from operator import attrgetter
from typing import Any

import msgspec
import msgspec.inspect as mi
from lxml import etree

from schemas.payload import Payload

__all__ = ["PayloadDecodeError", "decode_payload", "MAX_JSON_DEPTH"]


class PayloadDecodeError(Exception):
    """A body that cannot become a Payload. str(e) is a one-line human reason (includes the path where msgspec gives one)."""


# Our payload nests 4 levels; anything near msgspec's recursion limit is an
# attack or a bug, and msgspec may crash (not raise) on a small thread stack.
MAX_JSON_DEPTH = 32
# Bounds of the ``integer`` columns (speaker_type_id): out of range would fail
# the whole COPY batch in the writer instead of this one message here.
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1

_UTC = datetime.timezone.utc
_JSON_DECODER = msgspec.json.Decoder(Payload)
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def decode_payload(body: bytes, content_type: str | None) -> Payload:
    """Decode ``body`` according to ``content_type``; raise only PayloadDecodeError."""
    media = (content_type or "").partition(";")[0].strip().lower()
    try:
        if media in ("application/json", "text/json") or media.endswith("+json"):
            return _storable(_decode_json(body), _PLAN)
        if media in ("application/xml", "text/xml") or media.endswith("+xml"):
            return _storable(_decode_xml(body), _PLAN)
    except PayloadDecodeError:
        raise
    except Exception as e:  # the contract: nothing else escapes, for any input
        raise _error(f"undecodable body ({type(e).__name__}: {e})") from e
    raise _error(f"unsupported content type {content_type!r} (expected JSON or XML)")


def _error(reason: str) -> PayloadDecodeError:
    # One line, bounded: reasons end up in logs and dead-letter headers.
    return PayloadDecodeError(" ".join(reason.split())[:500])


# --- JSON -----------------------------------------------------------------

# Brackets become "(" / ")", everything else is deleted: one C pass.
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# A JSON string, the closing quote optional so an unterminated one ends the
# match instead of making re retry from every later quote (quadratic).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)


def _decode_json(body: bytes) -> Payload:
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]  # tolerated by RFC 8259 parsers, rejected by msgspec
    elif body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise _error("invalid JSON payload: JSON must be UTF-8, body starts with a UTF-16/32 byte order mark")
    # Brackets inside strings count too here, which only overestimates; a body
    # over the limit gets the exact (slower) count without its strings.
    if _nesting(body.translate(_TO_PARENS, _NOT_BRACKETS)) > MAX_JSON_DEPTH and (
        _nesting(_JSON_STRING.sub(b"", body).translate(_TO_PARENS, _NOT_BRACKETS)) > MAX_JSON_DEPTH
    ):
        raise _error(f"invalid JSON payload: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = _JSON_DECODER.decode(body)
    except msgspec.ValidationError as e:
        legacy = _rewrite_dotnet_dates(body) if "datetime" in str(e) else None
        if legacy is None:
            raise _error(f"invalid JSON payload: {e}") from e
        payload = _decode_rewritten(legacy)
    except msgspec.DecodeError as e:
        raise _error(f"invalid JSON payload: {e}") from e
    except UnicodeError as e:
        raise _error(f"invalid JSON payload: not UTF-8 ({e})") from e
    # NUL can only arrive as the escape \u0000, and any escape needs a
    # backslash: a one-byte memchr rules out nearly every body.
    if b"\\" in body and b"\\u0000" in body:
        path = _nul_path(payload, "$")
        if path is not None:
            raise _error(f"invalid JSON payload: string contains NUL (\\u0000), which PostgreSQL text cannot store - at `{path}`")
    return payload


def _nesting(parens: bytes) -> int:
    """An upper bound of the nesting depth of a string of "(" and ")"; exact when balanced.

    Each ``replace`` removes every innermost pair, i.e. one level, at C speed;
    a real payload needs ~4 rounds. What is left then is ")))(((": unmatched
    openers each add one level at most.
    """
    rounds = 0
    while rounds <= MAX_JSON_DEPTH:
        shorter = parens.replace(b"()", b"")
        if len(shorter) == len(parens):
            break
        parens, rounds = shorter, rounds + 1
    return rounds + parens.count(b"(")


# .NET's legacy JSON date, "\/Date(1733462277308+0000)\/": milliseconds since
# the epoch in UTC; the offset only says which zone the sender was in.
# Rewritten only as the value of a datetime field, and only after the normal
# decode failed on a datetime, so ordinary bodies pay nothing for it.
_DATETIME_FIELDS: set[str] = set()  # filled from the Structs below
_DOTNET_DATE: re.Pattern[bytes]  # likewise


def _rewrite_dotnet_dates(body: bytes) -> bytes | None:
    if b"Date(" not in body:
        return None
    rewritten = _DOTNET_DATE.sub(_iso_date, body)
    return rewritten if rewritten != body else None


def _iso_date(m: re.Match[bytes]) -> bytes:
    when = datetime.datetime(1970, 1, 1, tzinfo=_UTC) + datetime.timedelta(milliseconds=int(m[2]))
    return b'%s"%s"' % (m[1], when.isoformat().encode())


def _decode_rewritten(body: bytes) -> Payload:
    try:
        return _JSON_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _error(f"invalid JSON payload: {e}") from e


def _nul_path(value: Any, path: str) -> str | None:
    # Only reached when the body has a \u0000 escape: speed does not matter.
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _nul_path(item, f"{path}[{i}]")) is not None:
                return found
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            if (found := _nul_path(getattr(value, name), f"{path}.{name}")) is not None:
                return found
    return None


# --- XML ------------------------------------------------------------------

_parsers = threading.local()


def _xml_parser() -> etree.XMLParser:
    # One per thread: an lxml parser serialises concurrent users, and building
    # one per body costs more than the small documents' parse.
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            huge_tree=False, remove_comments=True, remove_pis=True,
        )
    return parser


class _XmlValueError(Exception):
    """A value rejected during the tree walk; collects its path while unwinding."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, []


def _decode_xml(body: bytes) -> Payload:
    # A DataContract body never has a DTD, and a DTD is how every entity attack
    # starts; this catches it before parsing in UTF-8. Other encodings (UTF-16)
    # reach the parser, whose settings keep entities unexpanded and offline, and
    # are caught after it by the docinfo check.
    if b"<!DOCTYPE" in body:  # entity declarations can only be inside one
        raise _error("invalid XML payload: DOCTYPE/DTD or entity declarations are not allowed")
    try:
        root = etree.fromstring(body, _xml_parser())
    except (etree.LxmlError, ValueError) as e:  # ValueError: e.g. empty-ish input
        raise _error(f"invalid XML payload: {e}") from e
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise _error("invalid XML payload: DOCTYPE/DTD or entity declarations are not allowed")
    try:
        obj = _xml_object(root, _XML_PLAN)
    except _XmlValueError as e:
        raise _error(f"invalid XML payload: {e.reason} - at `${''.join(reversed(e.path))}`") from e
    try:
        return msgspec.convert(obj, Payload, strict=False)  # parses "5.1", "true", UUIDs, datetimes
    except msgspec.ValidationError as e:
        raise _error(f"invalid XML payload: {e}") from e


_STR, _FLOAT, _SCALAR, _STRUCT, _LIST = range(5)


def _xml_object(elem: Any, plan: dict[str, tuple[int, Any]]) -> dict[str, Any]:
    """Child elements of ``elem`` as a dict, by local name, guided by the Struct's plan."""
    out: dict[str, Any] = {}
    for child in elem.iterchildren(etree.Element):
        name = child.tag.rpartition("}")[2]  # local name: the vendor's namespaces may change
        entry = plan.get(name)
        if entry is None:
            continue  # unknown element: the vendor may add fields
        kind, sub = entry
        try:
            out[name] = _xml_value(child, kind, sub)
        except _XmlValueError as e:
            e.path.append(f".{name}")
            raise
    return out


def _xml_value(elem: Any, kind: int, sub: Any) -> Any:
    if _is_nil(elem):
        return None
    if kind == _STRUCT:
        return _xml_object(elem, sub)
    if kind == _LIST:  # the items are the children, whatever their tag
        items = []
        for i, item in enumerate(elem.iterchildren(etree.Element)):
            try:
                items.append(None if _is_nil(item) else _xml_object(item, sub))
            except _XmlValueError as e:
                e.path.append(f"[{i}]")
                raise
        return items
    if len(elem):
        return {}  # markup where text belongs: msgspec reports the type error with its path
    text = elem.text or ""  # no nil, no text: an empty string
    if kind == _STR:
        return text  # strings are data, kept verbatim
    text = text.strip()  # XSD collapses whitespace for numbers, booleans, ids, dates
    # Every non-finite spelling msgspec accepts (nan, inf, infinity, any case or
    # sign) has an "n"; a finite decimal never does.
    if kind == _FLOAT and ("n" in text or "N" in text):
        raise _XmlValueError(f"non-finite number {text[:20]!r} is not accepted")
    return text


def _is_nil(elem: Any) -> bool:
    nil = elem.get(_XSI_NIL)
    return nil is not None and nil.strip() in ("true", "1")


# --- storable: tz-aware datetimes, integers in range ------------------------


def _storable(obj: Any, plan: Any, path: str = "$") -> Any:
    """``obj`` with naive datetimes taken as UTC; PayloadDecodeError if an int exceeds ``integer``.

    Rebuilds (``structs.replace``) only what has to change, and looks at a
    list item by item only when a C-level scan of the whole list says so.
    """
    dt_names, int_names, subs = plan
    changes = {}
    for name in dt_names:
        value = getattr(obj, name)
        if value is not None and value.tzinfo is None:
            changes[name] = value.replace(tzinfo=_UTC)
    for name in int_names:
        value = getattr(obj, name)
        if value is not None and not _INT4_MIN <= value <= _INT4_MAX:
            raise _error(f"integer {value} is out of range for a PostgreSQL integer - at `{path}.{name}`")
    for name, is_list, sub in subs:
        value = getattr(obj, name)
        if value is None:
            pass
        elif not is_list:
            new = _storable(value, sub, f"{path}.{name}")
            if new is not value:
                changes[name] = new
        elif _needs_visit(value, sub):
            changes[name] = [_storable(item, sub, f"{path}.{name}[{i}]") for i, item in enumerate(value)]
    return msgspec.structs.replace(obj, **changes) if changes else obj


_TZINFO = attrgetter("tzinfo")


def _needs_visit(items: list[Any], plan: Any) -> bool:
    dt_names, int_names, subs = plan
    if subs:
        return True  # nested structures: just walk them (none in today's schema)
    for get in map(attrgetter, int_names):  # filter(None) skips nulls (and zeros)
        if max(filter(None, map(get, items)), default=0) > _INT4_MAX:
            return True
        if min(filter(None, map(get, items)), default=0) < _INT4_MIN:
            return True
    # `None in` stops at the first naive datetime.
    return any(None in map(_TZINFO, filter(None, map(attrgetter(n), items))) for n in dt_names)


# --- plans, computed once from the Structs -----------------------------------


def _unwrap(t: Any) -> Any:
    if isinstance(t, mi.UnionType):  # X | None
        (t,) = [x for x in t.types if not isinstance(x, mi.NoneType)]
    return t


def _xml_plan(struct: mi.StructType) -> dict[str, tuple[int, Any]]:
    plan: dict[str, tuple[int, Any]] = {}
    for f in struct.fields:
        t = _unwrap(f.type)
        if isinstance(t, mi.StructType):
            plan[f.encode_name] = (_STRUCT, _xml_plan(t))
        elif isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            plan[f.encode_name] = (_LIST, _xml_plan(t.item_type))
        else:
            kind = _STR if isinstance(t, mi.StrType) else _FLOAT if isinstance(t, mi.FloatType) else _SCALAR
            plan[f.encode_name] = (kind, None)
    return plan


def _storable_plan(struct: mi.StructType) -> tuple[Any, ...]:
    dt_names, int_names, subs = [], [], []
    for f in struct.fields:
        t = _unwrap(f.type)
        if isinstance(t, mi.DateTimeType):
            dt_names.append(f.name)
            _DATETIME_FIELDS.add(f.encode_name)
        elif isinstance(t, mi.IntType):
            int_names.append(f.name)
        elif isinstance(t, mi.StructType):
            subs.append((f.name, False, _storable_plan(t)))
        elif isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            subs.append((f.name, True, _storable_plan(t.item_type)))
    # Drop sub-structures with nothing to fix or check, so they are never walked.
    subs = [s for s in subs if any(s[2])]
    return tuple(dt_names), tuple(int_names), tuple(subs)


_PAYLOAD_INFO = mi.type_info(Payload)
_XML_PLAN = _xml_plan(_PAYLOAD_INFO)
_PLAN = _storable_plan(_PAYLOAD_INFO)
_DOTNET_DATE = re.compile(
    rb'("(?:%s)"\s*:\s*)"\\?/Date\((-?\d{1,15})(?:[+-]\d{4})?\)\\?/"'
    % b"|".join(re.escape(n.encode()) for n in sorted(_DATETIME_FIELDS))
)
