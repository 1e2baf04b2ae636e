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
"""

from __future__ import annotations

import datetime
import re
import threading
from operator import attrgetter
from typing import Any, cast

import msgspec
import msgspec.inspect as mi
from lxml import etree

from schemas.payload import Payload

__all__ = ["MAX_JSON_DEPTH", "PayloadDecodeError", "decode_payload"]


class PayloadDecodeError(Exception):
    """A body that cannot become a Payload.

    str(e) is a one-line human reason (with the path where msgspec gives one).
    """


# Our payload nests 4 levels; anything near msgspec's recursion limit is an
# attack or a bug, and msgspec may crash (not raise) on a small thread stack.
MAX_JSON_DEPTH = 32
# Bounds of the ``integer`` columns (speaker_type_id): out of range would fail
# the whole COPY batch in the writer instead of this one message here.
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1

_UTC = datetime.UTC
_JSON_DECODER = msgspec.json.Decoder(Payload)
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


def decode_payload(body: bytes, content_type: str | None) -> Payload:
    """Decode ``body`` according to ``content_type``; raise only PayloadDecodeError."""
    media = (content_type or "").partition(";")[0].strip().lower()
    try:
        if media in ("application/json", "text/json") or media.endswith("+json"):
            return _stored(_decode_json(body))
        if media in ("application/xml", "text/xml") or media.endswith("+xml"):
            return _stored(_decode_xml(body))
    except PayloadDecodeError:
        raise
    except Exception as e:  # the contract: nothing else escapes, for any input
        raise _error(f"undecodable body ({type(e).__name__}: {e})") from e
    raise _error(f"unsupported content type {content_type!r} (expected JSON or XML)")


def _stored(payload: Payload) -> Payload:
    _storable([payload], _PLAN, "$", indexed=False)
    return payload


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
    # backslash: a one-byte search (memchr, ~3 us on 250 KB) spares bodies
    # without escapes the substring search (~150 us).
    if b"\\" in body and b"\\u0000" in body:
        path = _nul_path(payload, "$")
        if path is not None:
            raise _error(
                f"invalid JSON payload: string contains NUL (\\u0000), which PostgreSQL text cannot store - at `{path}`"
            )
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
_DOTNET_DATE: re.Pattern[bytes]  # built from the Structs' datetime fields, below


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

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, [where]


def _decode_xml(body: bytes) -> Payload:
    # A DataContract body never has a DTD, and a DTD is how every entity attack
    # starts; this catches it before parsing in UTF-8. Other encodings (UTF-16)
    # reach the parser, whose settings keep entities unexpanded and offline, and
    # are caught after it by the docinfo check.
    if b"<!DOCTYPE" in body:  # entity declarations can only be inside one
        raise _error("invalid XML payload: DOCTYPE/DTD or entity declarations are not allowed")
    try:
        root = etree.fromstring(body, _xml_parser())
    except (etree.LxmlError, ValueError) as e:
        # .msg has line and column already, without str()'s "(<string>, line 1)"
        raise _error(f"invalid XML payload: {getattr(e, 'msg', None) or e}") from e
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


_STR, _FLOAT, _SCALAR, _STRUCT, _LIST = range(5)  # _SCALAR: int, bool, UUID, datetime


def _xml_object(elem: Any, plan: dict[str, tuple[int, Any]]) -> dict[str, Any]:
    """Child elements of ``elem`` as a dict, by local name, guided by the Struct's plan.

    This loop runs once per element (~5000 in a 250 KB body), hence inlined.
    """
    out: dict[str, Any] = {}
    for child in elem:  # elements only: the parser drops comments and PIs, a DTD is refused
        name = child.tag.rpartition("}")[2]  # local name: the vendor's namespaces may change
        entry = plan.get(name)
        if entry is None:
            continue  # unknown element: the vendor may add fields
        kind, sub = entry
        if kind < _STRUCT:
            text = child.text
            if len(child):
                value: Any = {}  # markup where text belongs: msgspec reports the type error with its path
            elif text is None:  # i:nil elements are empty, so only empty ones need the lookup
                value = None if _is_nil(child) else ""
            elif kind == _STR:
                value = text  # strings are data, kept verbatim
            else:
                value = text.strip()  # XSD collapses whitespace for numbers, booleans, ids, dates
                # Every non-finite spelling msgspec accepts (nan, inf, infinity,
                # any case or sign) has an "n"; a finite decimal never does.
                if kind == _FLOAT and ("n" in value or "N" in value):
                    raise _XmlValueError(f"non-finite number {value[:20]!r} is not accepted", f".{name}")
        elif not len(child) and _is_nil(child):
            value = None
        else:
            try:
                value = _xml_object(child, sub) if kind == _STRUCT else _xml_list(child, sub)
            except _XmlValueError as e:
                e.path.append(f".{name}")
                raise
        out[name] = value
    return out


def _xml_list(elem: Any, plan: dict[str, tuple[int, Any]]) -> list[Any]:
    items = []
    for i, item in enumerate(elem):  # the items are the children, whatever their tag
        try:
            items.append(None if not len(item) and _is_nil(item) else _xml_object(item, plan))
        except _XmlValueError as e:
            e.path.append(f"[{i}]")
            raise
    return items


def _is_nil(elem: Any) -> bool:
    nil = elem.get(_XSI_NIL)
    return nil is not None and nil.strip() in ("true", "1")


# --- storable: tz-aware datetimes, integers in range ------------------------

_TZINFO = attrgetter("tzinfo")
_YEAR = attrgetter("year")
_EDGE_YEARS = frozenset({datetime.MINYEAR, datetime.MAXYEAR})
_combine = datetime.datetime.combine


def _storable(items: list[Any], plan: Any, path: str, indexed: bool) -> None:
    """Make naive datetimes UTC, and refuse ints beyond ``integer``, in Structs of one type.

    A field is checked across all ``items`` by a C-level scan first (about 40 ns
    an item); only a hit walks the items in Python. Fixes are made in place
    (``force_setattr``): the payload was decoded a moment ago and nobody else
    holds it, and rebuilding frozen Structs with ``replace`` cost far more.
    """
    dt_names, int_names, subs = plan
    for name in dt_names:
        get = attrgetter(name)
        if None in map(_TZINFO, filter(None, map(get, items))):  # filter(None) skips nulls
            for item in items:
                value = get(item)
                if value is not None and value.tzinfo is None:
                    # = value.replace(tzinfo=UTC), 6x cheaper on Python 3.11 (1 us -> 0.16 us)
                    msgspec.structs.force_setattr(item, name, _combine(value, value.time(), _UTC))
        # Only a year at the very edge of datetime's range can leave it once
        # shifted to UTC (0001-01-01T00:00+14:00); the writer would fail the batch.
        if not _EDGE_YEARS.isdisjoint(map(_YEAR, filter(None, map(get, items)))):
            for i, item in enumerate(items):
                value = get(item)
                try:
                    if value is not None:
                        value.astimezone(_UTC)
                except OverflowError:
                    where = f"{path}[{i}].{name}" if indexed else f"{path}.{name}"
                    raise _error(f"timestamp {value.isoformat()} is out of range in UTC - at `{where}`") from None
    for name in int_names:
        get = attrgetter(name)
        # abs() folds both bounds into one pass; -2**31 then costs a walk, no error.
        if max(map(abs, filter(None, map(get, items))), default=0) > _INT4_MAX:
            for i, item in enumerate(items):
                value = get(item)
                if value is not None and not _INT4_MIN <= value <= _INT4_MAX:
                    where = f"{path}[{i}].{name}" if indexed else f"{path}.{name}"
                    raise _error(f"integer {value} is out of range for a PostgreSQL integer - at `{where}`")
    for name, is_list, sub in subs:  # Payload -> analysis -> its lists: few items here
        for i, item in enumerate(items):
            value = getattr(item, name)
            if value is not None:
                where = f"{path}[{i}].{name}" if indexed else f"{path}.{name}"
                _storable(value if is_list else [value], sub, where, is_list)


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
        elif isinstance(t, mi.IntType):
            int_names.append(f.name)
        elif isinstance(t, mi.StructType):
            subs.append((f.name, False, _storable_plan(t)))
        elif isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            subs.append((f.name, True, _storable_plan(t.item_type)))
    # Drop sub-structures with nothing to fix or check, so they are never walked.
    subs = [s for s in subs if any(s[2])]
    return tuple(dt_names), tuple(int_names), tuple(subs)


def _datetime_keys(struct: mi.StructType) -> set[str]:
    keys: set[str] = set()
    for f in struct.fields:
        t = _unwrap(f.type)
        t = t.item_type if isinstance(t, mi.ListType) else t
        if isinstance(t, mi.DateTimeType):
            keys.add(f.encode_name)
        elif isinstance(t, mi.StructType):
            keys |= _datetime_keys(t)
    return keys


_PAYLOAD_INFO = cast(mi.StructType, mi.type_info(Payload))
_XML_PLAN = _xml_plan(_PAYLOAD_INFO)
_PLAN = _storable_plan(_PAYLOAD_INFO)
_DOTNET_DATE = re.compile(
    rb'("(?:%s)"\s*:\s*)"\\?/Date\((-?\d{1,15})(?:[+-]\d{4})?\)\\?/"'
    % b"|".join(re.escape(k.encode()) for k in sorted(_datetime_keys(_PAYLOAD_INFO)))
)
