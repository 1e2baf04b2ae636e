"""``timestamptz`` written as the exact instant, on the worker's connections.

asyncpg's own codec writes the instants 0001-01-01T00:00:00Z and
9999-12-31T23:59:59.999999Z as ``-infinity`` and ``infinity`` (its stand-ins
for them), and cannot write an instant whose UTC year leaves 1-9999
(``0001-01-01T00:00:00+14:00``), though PostgreSQL holds all of them (4713 BC
to 294276 AD). .NET senders use both edges (``DateTime.MinValue`` for "unset",
``DateTime.MaxValue``). This codec sends every datetime as what it is:
microseconds since PostgreSQL's epoch, computed without leaving Python's range.
"""

from __future__ import annotations

import datetime

import asyncpg

__all__ = ["exact_timestamps"]

_PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
# PostgreSQL's infinity and -infinity on the wire.
_INFINITY, _MINUS_INFINITY = 2**63 - 1, -(2**63)
_LATEST = datetime.datetime.max.replace(tzinfo=datetime.UTC)
_EARLIEST = datetime.datetime.min.replace(tzinfo=datetime.UTC)


def _encode(value: datetime.datetime) -> tuple[int]:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)  # naive is UTC, as the decoder reads vendor times
    # An aware difference is computed from the offsets, never through a UTC datetime: no overflow.
    return ((value - _PG_EPOCH) // _MICROSECOND,)


def _decode(value: tuple[int]) -> datetime.datetime:
    (micros,) = value
    if micros == _INFINITY:
        return _LATEST  # what asyncpg returns for infinity, which we never write
    if micros == _MINUS_INFINITY:
        return _EARLIEST
    return _PG_EPOCH + datetime.timedelta(microseconds=micros)


async def exact_timestamps(conn: asyncpg.Connection) -> None:
    """Install the codec on ``conn`` (a pool's ``init``); arrays of timestamptz use it too."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode, decoder=_decode, format="tuple"
    )
