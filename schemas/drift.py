"""Schema drift: which fields of a callback body the payload Structs do not know.

msgspec ignores unknown fields (the vendor may add some at any time), so a new
field would otherwise only live on in the archived body. This reads a body
again, untyped, and names every object member the Structs do not declare: the
object holding it (``ConversationSentenceScoring``, ``JobStatus``...), its name,
and its kind (``object`` when it holds nested objects: a whole new structure,
else ``field``). It runs only on a sample of the callbacks (``worker.drift_log``
decides and records), after the body has decoded, so it never decides a
callback's fate and may cost a second parse.

JSON and XML are read the way the decoders read them: JSON members by exact
name; XML child elements by name in their DataContract's namespace (an element
of a known name in another namespace is unknown: the decoder skips it too, and
it is reported with its namespace), the items of a list being the list
element's children in the items' namespace, whatever their local name.

Names come from the vendor's body, i.e. from outside: each is made printable
(control and other unprintable characters escaped) and cut to ``MAX_NAME``
characters, and one body reports at most ``MAX_PER_BODY`` of them, so the
table, the metric labels and the logs they reach stay small and safe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import msgspec
import msgspec.inspect as mi

from schemas.decoding import parse_xml
from schemas.payload import XML_NAMESPACES, Payload

__all__ = ["FIELD", "OBJECT", "ROOT", "known_fields", "printable", "unknown_fields"]

FIELD, OBJECT = "field", "object"
ROOT = "Payload"  # the name the top-level object is reported under (XML calls it PayLoadSample)
MAX_NAME = 120
MAX_PER_BODY = 50

# (object, field) -> kind
Unknown = dict[tuple[str, str], str]


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """One payload object as the Structs declare it: its name, its members, its nested objects."""

    name: str
    known: frozenset[str]
    nested: tuple[tuple[str, bool, _Shape], ...]  # (member, is a list of objects, shape)
    namespace: str  # its DataContract namespace in XML, as lxml writes it: "{...}"


def _shape(name: str, struct: mi.StructType) -> _Shape:
    nested = []
    for f in struct.fields:
        t = f.type
        if isinstance(t, mi.UnionType):  # X | None
            (t,) = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if isinstance(t, mi.StructType):
            nested.append((f.encode_name, False, _shape(f.encode_name, t)))
        elif isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            nested.append((f.encode_name, True, _shape(f.encode_name, t.item_type)))
    namespace = f"{{{XML_NAMESPACES[struct.cls]}}}"  # type: ignore[index]  # every payload Struct is a VendorStruct
    return _Shape(name, frozenset(f.encode_name for f in struct.fields), tuple(nested), namespace)


_PAYLOAD = _shape(ROOT, mi.type_info(Payload))  # type: ignore[arg-type]


def known_fields() -> dict[str, frozenset[str]]:
    """Every object name and the members this version's Structs declare for it."""
    out: dict[str, frozenset[str]] = {}
    stack = [_PAYLOAD]
    while stack:
        shape = stack.pop()
        out[shape.name] = shape.known
        stack.extend(sub for _, _, sub in shape.nested)
    return out


def printable(name: str) -> str:
    """``name`` safe to store, label and show: unprintable characters escaped, length bounded."""
    if not name.isprintable():
        name = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def unknown_fields(body: bytes, content_type: str | None) -> Unknown:
    """The members of ``body`` the Structs do not know; ``body`` has decoded already (never raises for it)."""
    found: Unknown = {}
    media = (content_type or "").partition(";")[0].strip().lower()
    if "xml" in media:
        root = parse_xml(body, content_type or "")
        _xml(list(_children(root, _PAYLOAD, found)), _PAYLOAD, found)
    else:
        if body.startswith(b"\xef\xbb\xbf"):
            body = body[3:]
        _json([msgspec.json.decode(body)], _PAYLOAD, found)
    return found


def _note(found: Unknown, obj: str, name: str, kind: str) -> None:
    key = (obj, printable(name))
    # A name seen as an object somewhere stays one; past the cap only names already noted change.
    if (len(found) < MAX_PER_BODY or key in found) and found.get(key) != OBJECT:
        found[key] = kind


# --- JSON: objects are dicts -------------------------------------------------


def _holds_objects(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value))


def _json(objects: list[Any], shape: _Shape, found: Unknown) -> None:
    """Check ``objects`` (all of one shape: a list's items, or one object) against ``shape``."""
    objects = [o for o in objects if isinstance(o, dict)]
    if not objects:
        return
    # Items of one list share their keys: one C-level union, then a set difference.
    for name in set().union(*objects) - shape.known:
        kind = OBJECT if any(_holds_objects(o.get(name)) for o in objects) else FIELD
        _note(found, shape.name, name, kind)
    for member, is_list, sub in shape.nested:
        values = [o.get(member) for o in objects]
        if is_list:
            _json([item for v in values if isinstance(v, list) for item in v], sub, found)
        else:
            _json(values, sub, found)


# --- XML: objects are elements, members their child elements -----------------


def _name(elem: Any, namespace: str) -> str:
    """An element's name as reported: its local name in the contract's namespace, else its
    whole "{namespace}name" (the decoder ignores an element of a known name in another one)."""
    tag = elem.tag
    if not isinstance(tag, str):
        return ""
    return tag[len(namespace):] if tag.startswith(namespace) else tag


def _children(elem: Any, shape: _Shape, found: Unknown) -> Iterable[tuple[str, Any]]:
    """The members of one object element, noting those its shape lacks."""
    for child in elem:
        name = _name(child, shape.namespace)
        if name not in shape.known and name:
            _note(found, shape.name, name, OBJECT if len(child) else FIELD)
        yield name, child


def _xml(members: list[tuple[str, Any]], shape: _Shape, found: Unknown) -> None:
    by_name: dict[str, list[Any]] = {}
    for name, child in members:
        by_name.setdefault(name, []).append(child)
    for member, is_list, sub in shape.nested:
        for elem in by_name.get(member, ()):
            for item in list(elem) if is_list else [elem]:
                if is_list and not (isinstance(item.tag, str) and item.tag.startswith(sub.namespace)):
                    # Not an item of the list's contract: the decoder skips it, like an unknown field.
                    _note(found, sub.name, item.tag if isinstance(item.tag, str) else "", OBJECT)
                    continue
                _xml(list(_children(item, sub, found)), sub, found)
