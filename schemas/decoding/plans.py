"""Plans computed once from the payload Structs: what the XML walk and the storability checks look for.

The decoders run per field and per element; walking msgspec's type information
there would cost more than the decode. These tables say, once, which element is
a string, a float, a scalar, a Struct or a list of them (the XML walk), and which
fields are datetimes or integers (the storability checks), and which JSON keys
hold datetimes (the .NET legacy date rewrite).
"""

from __future__ import annotations

from typing import Any, cast

import msgspec.inspect as mi

from schemas.payload import Payload

_STR, _FLOAT, _SCALAR, _STRUCT, _LIST = range(5)  # _SCALAR: int, bool, UUID, datetime
STR, FLOAT, SCALAR, STRUCT, LIST = _STR, _FLOAT, _SCALAR, _STRUCT, _LIST


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
DATETIME_KEYS = frozenset(_datetime_keys(_PAYLOAD_INFO))
XML_PLAN = _XML_PLAN
STORABLE_PLAN = _PLAN
