"""A .NET DataContract XML body to a Payload: hardened parser, one walk guided by the Structs' plan.

No DTD, no entities, no network (refused before parsing when visible, and the
parser would not expand them anyway); a field is only an element of its name in
its DataContract's namespace (schemas.payload.XML_NAMESPACES), any other element
is unknown and skipped (the vendor may add fields); a field given twice, or
``i:nil`` with content, is refused as ambiguous; ``i:nil`` is null; the bytes are
read in the content type's charset when the body declares none (xml_encoding);
the result is converted by msgspec, which parses the text of numbers, booleans,
UUIDs and datetimes (dates: the same .NET spellings as in JSON).
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec
from lxml import etree

from schemas.decoding import dates
from schemas.decoding.errors import error as _error
from schemas.decoding.plans import DATETIME as _DATETIME
from schemas.decoding.plans import FLOAT as _FLOAT
from schemas.decoding.plans import STR as _STR
from schemas.decoding.plans import STRUCT as _STRUCT
from schemas.decoding.plans import XML_PLAN as _XML_PLAN
from schemas.decoding.plans import XmlPlan as _Plan
from schemas.decoding.xml_encoding import AmbiguousEncoding, charset_of, imposed_encoding
from schemas.payload import XML_NAMESPACES, Payload

# As bytes: lxml's get() then skips encoding the key on every call (~0.2 us an element
# instead of ~0.7 us, measured alone; the walk asks it of every element).
_XSI_NIL = b"{http://www.w3.org/2001/XMLSchema-instance}nil"


_parsers = threading.local()


def _new_parser(encoding: str | None) -> etree.XMLParser:
    return etree.XMLParser(
        encoding=encoding, resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_comments=True, remove_pis=True,
    )


def _xml_parser(encoding: str | None) -> etree.XMLParser:
    if encoding is not None:  # a charset the body does not declare: rare, so built per body
        return _new_parser(encoding)
    # One per thread: an lxml parser serialises concurrent users, and building
    # one per body costs more than the small documents' parse.
    parser: etree.XMLParser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = _new_parser(None)
    return parser


class _XmlValueError(Exception):
    """A value rejected during the tree walk; collects its path while unwinding."""

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, [where]


def parse_xml(body: bytes, content_type: str) -> Any:
    """The body's root element, parsed with the hardened settings; raises only PayloadDecodeError.

    Public for the schema-drift check (schemas.drift), which reads the same tree
    the decoder reads, never a more trusting one. ``content_type``'s charset is
    how a body without an encoding declaration is read (xml_encoding).
    """
    # A DataContract body never has a DTD, and a DTD is how every entity attack
    # starts; this catches it before parsing in UTF-8. Other encodings (UTF-16)
    # reach the parser, whose settings keep entities unexpanded and offline, and
    # are caught after it by the docinfo check.
    if b"<!DOCTYPE" in body:  # entity declarations can only be inside one
        raise _error("invalid XML payload: DOCTYPE/DTD or entity declarations are not allowed")
    try:
        encoding = imposed_encoding(body, charset_of(content_type))
    except AmbiguousEncoding as e:
        raise _error(f"invalid XML payload: {e}") from e
    try:
        root = etree.fromstring(body, _xml_parser(encoding))
    except (etree.LxmlError, ValueError) as e:
        # .msg has line and column already, without str()'s "(<string>, line 1)"
        raise _error(f"invalid XML payload: {getattr(e, 'msg', None) or e}") from e
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise _error("invalid XML payload: DOCTYPE/DTD or entity declarations are not allowed")
    return root


def decode_xml(body: bytes, content_type: str) -> Payload:
    root = parse_xml(body, content_type)
    tag = root.tag if isinstance(root.tag, str) else ""
    if not tag.startswith(_ROOT_NAMESPACE):
        # Every field would be unknown, and the callback stored as empty: refused instead.
        raise _error(f"invalid XML payload: the root element {tag[:200]!r} is not in the namespace"
                     f" {_ROOT_NAMESPACE[1:-1]!r} of the payload's contract")
    try:
        obj = _xml_object(root, _XML_PLAN)
    except _XmlValueError as e:
        raise _error(f"invalid XML payload: {e.reason} - at `${''.join(reversed(e.path))}`") from e
    try:
        return msgspec.convert(obj, Payload, strict=False)  # parses "5.1", "true", UUIDs, datetimes
    except msgspec.ValidationError as e:
        raise _error(f"invalid XML payload: {e}") from e


_ROOT_NAMESPACE = f"{{{XML_NAMESPACES[Payload]}}}"


def _xml_object(elem: Any, plan: _Plan) -> dict[str, Any]:
    """Child elements of ``elem`` as a dict, by field name, guided by the Struct's plan.

    A field is only an element of its name in its contract's namespace (the
    plan's keys are lxml's "{namespace}local" tags); any other element is
    unknown and skipped, as the vendor may add fields. A field given twice, or
    nil with content, is refused: which value was meant is a guess.
    This loop runs once per element (~5000 in a 250 KB body), hence inlined.
    """
    out: dict[str, Any] = {}
    for child in elem:  # elements only: the parser drops comments and PIs, a DTD is refused
        entry = plan.get(child.tag)
        if entry is None:
            continue  # unknown element
        name, kind, sub = entry
        if name in out:
            raise _XmlValueError(f"ambiguous: element {name} appears more than once", f".{name}")
        text = child.text
        nil = child.get(_XSI_NIL)
        if nil is not None and nil.strip() in ("true", "1"):
            if len(child) or (text is not None and not text.isspace()):
                raise _XmlValueError(f"ambiguous: element {name} is nil and has content", f".{name}")
            out[name] = None
            continue
        value: Any
        if kind < _STRUCT:
            if len(child):
                value = {}  # markup where text belongs: msgspec reports the type error with its path
            elif text is None:
                value = ""
            elif kind == _STR:
                value = text  # strings are data, kept verbatim
            else:
                value = text.strip()  # XSD collapses whitespace for numbers, booleans, ids, dates
                # Every non-finite spelling msgspec accepts (nan, inf, infinity,
                # any case or sign) has an "n"; a finite decimal never does.
                if kind == _FLOAT and ("n" in value or "N" in value):
                    raise _XmlValueError(f"non-finite number {value[:20]!r} is not accepted", f".{name}")
                if kind == _DATETIME:
                    value = dates.exact(value)  # the same spellings as in JSON
        else:
            try:
                value = _xml_object(child, sub) if kind == _STRUCT else _xml_list(child, *sub)
            except _XmlValueError as e:
                e.path.append(f".{name}")
                raise
        out[name] = value
    return out


def _xml_list(elem: Any, namespace: str, plan: _Plan) -> list[Any]:
    """The items: children in the item contract's namespace, whatever their local name."""
    items: list[Any] = []
    i = 0
    for item in elem:
        if not item.tag.startswith(namespace):
            continue  # not an item of this contract: unknown, like an unknown field
        nil = item.get(_XSI_NIL)
        try:
            if nil is not None and nil.strip() in ("true", "1"):
                if len(item) or (item.text is not None and not item.text.isspace()):
                    raise _XmlValueError("ambiguous: item is nil and has content", "")
                items.append(None)  # msgspec refuses a null item with its path
            else:
                items.append(_xml_object(item, plan))
        except _XmlValueError as e:
            e.path.append(f"[{i}]")
            raise
        i += 1
    return items
