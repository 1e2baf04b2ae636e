"""Plans computed once from the payload Structs: what the XML walk and the storability checks look for.

The decoders run per field and per element; walking msgspec's type information
there would cost more than the decode. These tables say, once, which element is
a string, a float, a datetime, another scalar, a Struct or a list of them, by its
namespace and name (the XML walk), and which
fields are datetimes or integers (the storability checks), and which JSON keys
hold datetimes (the .NET legacy date rewrite).
"""

from __future__ import annotations

from typing import Any, cast

import msgspec.inspect as mi

from schemas.payload import XML_NAMESPACES, Payload

_STR, _FLOAT, _SCALAR, _DATETIME, _STRUCT, _LIST = range(6)  # _SCALAR: int, bool, UUID
STR, FLOAT, SCALAR, DATETIME, STRUCT, LIST = _STR, _FLOAT, _SCALAR, _DATETIME, _STRUCT, _LIST
# "{namespace}Name" (lxml's tag) -> (field name, kind, sub-plan); a list's sub-plan is
# (its items' "{namespace}", their plan).
_Plan = dict[str, tuple[str, int, Any]]
XmlPlan = _Plan


def _unwrap(t: Any) -> Any:
    if isinstance(t, mi.UnionType):  # X | None
        (t,) = [x for x in t.types if not isinstance(x, mi.NoneType)]
    return t


def _namespace(struct: mi.StructType) -> str:
    return XML_NAMESPACES[struct.cls]  # type: ignore[index]  # every payload Struct is a VendorStruct


def _xml_plan(struct: mi.StructType) -> _Plan:
    namespace = f"{{{_namespace(struct)}}}"
    plan: _Plan = {}
    for f in struct.fields:
        t = _unwrap(f.type)
        tag = namespace + f.encode_name
        if isinstance(t, mi.StructType):
            plan[tag] = (f.encode_name, _STRUCT, _xml_plan(t))
        elif isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            item = t.item_type
            plan[tag] = (f.encode_name, _LIST, (f"{{{_namespace(item)}}}", _xml_plan(item)))
        else:
            kind = (_STR if isinstance(t, mi.StrType) else _FLOAT if isinstance(t, mi.FloatType)
                    else _DATETIME if isinstance(t, mi.DateTimeType) else _SCALAR)
            plan[tag] = (f.encode_name, kind, None)
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
DATETIME_KEYS = frozenset(_datetime_keys(_PAYLOAD_INFO))
XML_PLAN = _XML_PLAN
STORABLE_PLAN = _PLAN
