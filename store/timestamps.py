"""``timestamptz`` as the exact instant, both ways, on every connection the product opens.

asyncpg's own codec writes the instants 0001-01-01T00:00:00Z and
9999-12-31T23:59:59.999999Z as ``-infinity`` and ``infinity`` (its stand-ins
for them), and can neither write nor read an instant whose UTC year leaves
1-9999 (``0001-01-01T00:00:00+14:00`` is 1 BC in UTC), though PostgreSQL holds
all of them (4713 BC to 294276 AD). .NET senders use both edges
(``DateTime.MinValue`` for "unset", ``DateTime.MaxValue``), so the worker
stores such instants, and every reader (console, ops, analytics) must read
them back. This codec sends every datetime as what it is, microseconds since
PostgreSQL's epoch computed without leaving Python's range, and reads back a
``datetime`` where Python has one, else a :class:`FarInstant`: the instant as
PostgreSQL writes it in UTC. :func:`store.connection.connect` and
:func:`store.connection.create_pool` install it.
"""

from __future__ import annotations

import datetime

import asyncpg

__all__ = ["FarInstant", "as_text", "exact_timestamps"]

_PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
_MICROS_PER_DAY = 86_400_000_000
# 400 Gregorian years are exactly this many days: shifting a date by whole cycles
# keeps its month, day and weekday, so a date beyond Python's years is formatted
# by moving it into them and writing the year it really has.
_CYCLE_DAYS, _CYCLE_YEARS = 146_097, 400
# PostgreSQL's infinity and -infinity on the wire.
_INFINITY, _MINUS_INFINITY = 2**63 - 1, -(2**63)


class FarInstant(str):
    """An instant ``datetime`` cannot hold (a UTC year outside 1-9999, or ±infinity), as PostgreSQL
    writes it with ``TimeZone=UTC`` (``10000-01-01 04:59:59.999999+00``, ``0001-12-31 10:00:00+00 BC``).
    A string, so pages, tables and JSON show it as it is; written back, it is the same instant."""

    micros: int  # since 2000-01-01T00:00:00Z, as on the wire

    def __new__(cls, micros: int) -> FarInstant:
        self = super().__new__(cls, _text_of(micros))
        self.micros = micros
        return self


def as_text(value: datetime.datetime | FarInstant) -> str:
    """The exact instant as PostgreSQL writes it in UTC (trailing zeros of the fraction dropped)."""
    return _text_of(_encode(value)[0])


def _text(utc: datetime.datetime, year: int) -> str:
    fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
    era = "" if year > 0 else " BC"  # PostgreSQL's year 0 is 1 BC
    return f"{year if year > 0 else 1 - year:04d}{utc:-%m-%d %H:%M:%S}{fraction}+00{era}"


def _text_of(micros: int) -> str:
    if micros == _INFINITY:
        return "infinity"
    if micros == _MINUS_INFINITY:
        return "-infinity"
    days, rest = divmod(micros, _MICROS_PER_DAY)
    cycles = days // _CYCLE_DAYS  # 2000-01-01 + the remaining days lies in 2000-2399
    shifted = _PG_EPOCH + datetime.timedelta(days=days - cycles * _CYCLE_DAYS, microseconds=rest)
    return _text(shifted, shifted.year + cycles * _CYCLE_YEARS)


def _encode(value: datetime.datetime | FarInstant) -> tuple[int]:
    if isinstance(value, FarInstant):
        return (value.micros,)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)  # naive is UTC, as the decoder reads vendor times
    # An aware difference is computed from the offsets, never through a UTC datetime: no overflow.
    return ((value - _PG_EPOCH) // _MICROSECOND,)


def _decode(value: tuple[int]) -> datetime.datetime | FarInstant:
    (micros,) = value
    try:
        return _PG_EPOCH + micros * _MICROSECOND
    except OverflowError:
        return FarInstant(micros)


async def exact_timestamps(conn: asyncpg.Connection) -> None:
    """Install the codec on ``conn``; arrays of timestamptz use it too."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode, decoder=_decode, format="tuple"
    )
