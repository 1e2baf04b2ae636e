"""A decoded payload made storable: naive datetimes are UTC, integers fit PostgreSQL's ``integer``.

Each check is a C-level scan across all items of one field first; only a hit
walks the items in Python, so an ordinary body pays little for it.
"""

from __future__ import annotations

import datetime
from operator import attrgetter
from typing import Any

import msgspec

from schemas.decoding.errors import error as _error
from schemas.decoding.plans import STORABLE_PLAN as _PLAN
from schemas.payload import Payload

# Bounds of the ``integer`` columns (speaker_type_id): out of range would fail
# the whole COPY batch in the writer instead of this one message here.
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1

_UTC = datetime.UTC


def stored(payload: Payload) -> Payload:
    """``payload``, fixed in place where it can be and checked where it cannot (PayloadDecodeError)."""
    _storable([payload], _PLAN, "$", indexed=False)
    return payload


_TZINFO = attrgetter("tzinfo")
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
