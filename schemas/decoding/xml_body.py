"""A .NET DataContract XML body to a Payload: hardened parser, one walk guided by the Structs' plan.

No DTD, no entities, no network (refused before parsing when visible, and the
parser would not expand them anyway); unknown elements are skipped (the vendor
may add fields); ``i:nil`` is null; the result is converted by msgspec, which
parses the text of numbers, booleans, UUIDs and datetimes.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec
from lxml import etree

from schemas.decoding.errors import error as _error
from schemas.decoding.plans import FLOAT as _FLOAT
from schemas.decoding.plans import STR as _STR
from schemas.decoding.plans import STRUCT as _STRUCT
from schemas.decoding.plans import XML_PLAN as _XML_PLAN
from schemas.payload import Payload

_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


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


def parse_xml(body: bytes) -> Any:
    """The body's root element, parsed with the hardened settings; raises only PayloadDecodeError.

    Public for the schema-drift check (schemas.drift), which reads the same tree
    the decoder reads, never a more trusting one.
    """
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
    return root


def decode_xml(body: bytes) -> Payload:
    root = parse_xml(body)
    try:
        obj = _xml_object(root, _XML_PLAN)
    except _XmlValueError as e:
        raise _error(f"invalid XML payload: {e.reason} - at `${''.join(reversed(e.path))}`") from e
    try:
        return msgspec.convert(obj, Payload, strict=False)  # parses "5.1", "true", UUIDs, datetimes
    except msgspec.ValidationError as e:
        raise _error(f"invalid XML payload: {e}") from e


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
