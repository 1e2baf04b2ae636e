"""A JSON body to a Payload: msgspec's decoder, behind the guards it lacks.

Guards: nesting depth (msgspec may crash, not raise, near its recursion limit on a
small thread stack), UTF-16/32 byte order marks, NUL in strings (PostgreSQL text
refuses it); and .NET's timestamp spellings (dates): seven fractional digits,
truncated rather than rounded, and the legacy ``\\/Date(...)\\/``.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import msgspec

from schemas.decoding import dates
from schemas.decoding.errors import error as _error
from schemas.decoding.plans import DATETIME_KEYS
from schemas.payload import Payload

# Our payload nests 4 levels; anything near msgspec's recursion limit is an
# attack or a bug, and msgspec may crash (not raise) on a small thread stack.
MAX_JSON_DEPTH = 32

_UTC = datetime.UTC
_JSON_DECODER = msgspec.json.Decoder(Payload)


# Brackets become "(" / ")", everything else is deleted: one C pass.
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# A JSON string, the closing quote optional so an unterminated one ends the
# match instead of making re retry from every later quote (quadratic).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)


def decode_json(body: bytes) -> Payload:
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
    # Timestamps in .NET's spellings (schemas.decoding.dates) are made exact first when a
    # cheap scan finds seven-digit fractions, which msgspec would round; the
    # legacy /Date()/ form only once the normal decode failed on a datetime.
    exact = dates.rewrite_json(_DATE_VALUES, body) if dates.TICKS_HINT.search(body) else None
    try:
        payload = _JSON_DECODER.decode(exact or body)
    except msgspec.ValidationError as e:
        legacy = dates.rewrite_json(_DATE_VALUES, body) if exact is None and "datetime" in str(e) else None
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


_DATE_VALUES = dates.json_rewriter(DATETIME_KEYS)
