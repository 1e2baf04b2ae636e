"""aiohttp's own lines about requests it cannot parse: one warning saying what was wrong, nothing of the request.

aiohttp logs such a request with ``logger.exception``: an error-level traceback
whose message quotes the raw bytes of the offending line, and for an LF-only
request that "line" is the whole request, body included. An attacker decides how
many of those lines we write and what they contain. The server gets ``ServerLog``
instead of its logger: an HTTP parsing error becomes one warning with the
parser's reason (a fixed text of the parser, never the request's bytes) and the
status answered; anything else is logged as aiohttp meant it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

# aiohttp's C parser writes "<llhttp's reason>:\n\n  b'<raw bytes>'": the reason
# is one of llhttp's fixed messages; raw bytes never hold a newline (repr escapes it).
_PARSER_REASON = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ,'/()-]{0,79}):\n\n  b['\"]", re.MULTILINE)
# Otherwise aiohttp's message quotes the request: say what kind of fault it was, by its class.
_KINDS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (LineTooLong, "line too long"),
    (InvalidHeader, "invalid header"),
    (BadHttpMethod, "invalid method (not HTTP, or TLS sent to a plain HTTP port)"),
    (BadStatusLine, "invalid request line"),
    (InvalidURLError, "invalid URL"),
    (PayloadEncodingError, "invalid body framing"),
)

def describe(error: HttpProcessingError) -> str:
    """What was wrong with the request, in words none of which came from it."""
    match = _PARSER_REASON.search(error.message)
    if match:
        return match.group(1)
    return next((kind for cls, kind in _KINDS if isinstance(error, cls)), "malformed request")


def _exception(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) > 1 and isinstance(exc_info[1], BaseException) else None
    return sys.exc_info()[1] if exc_info else None


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, with parsing errors turned into one warning line without the request."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs  # keep the caller's extra (the default would replace it with ours)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = _exception(kwargs.get("exc_info"))
        if isinstance(error, HttpProcessingError):
            extra: Mapping[str, object] = kwargs.get("extra") or {}
            kwargs["extra"] = {**extra, "reason": describe(error), "status": error.code or 400}
            kwargs["exc_info"] = None
            level = min(level, logging.WARNING)
        super().log(level, msg, *args, **kwargs)
