"""Keep callback tokens out of every log line the gateway process writes.

The token is part of the URL, and aiohttp puts URLs in places our access
logger never sees: "Error handling request" tracebacks quote the raw request
line of a malformed request (`b'GARBAGE /flowscribe/callback/<token> HTTP/1.1'`),
an exception raised in a handler may carry the URL in its message, and so on.
Rather than chase each of those, the gateway wraps the formatter of every root
handler: whatever a record turns into (message, extras, traceback), the text
written passes through ``redact`` last.

Text quoted from a request is not always the path as we would spell it: every
character may be percent-encoded (once, or twice: ``%2566``), and aiohttp cuts
what it quotes at 100 bytes, so a token can end a line half-written. Hence the
prefix is matched in any of those spellings, and a configured token is found by
any 8 consecutive characters of it, in any spelling, and redacted from there to
the end of the token-like run.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator

from gateway.routes import CALLBACK_PATH
from runtime.redaction import REDACTED, TokensRedactor, any_spelling

__all__ = ["REDACTED", "RedactingFormatter", "Redactor", "redact_path", "redacted_logs"]

# Whatever follows the callback prefix, up to a character that ends a path in
# the places it gets written: whitespace, quotes (reprs, JSON), query, fragment.
# Escapes (JSON's \u00e9, a bytes repr's \xff) are swallowed with it.
_SEGMENT = r"(?:[^\s\"'<>?#\\]|\\u[0-9a-fA-F]{4}|\\x[0-9a-fA-F]{2})+"
_TOKEN_IN_PATH = re.compile(re.escape(CALLBACK_PATH + "/") + _SEGMENT)
_TOKEN_IN_ENCODED_PATH = re.compile(any_spelling(CALLBACK_PATH + "/") + _SEGMENT)


def redact_path(path: str) -> str:
    """``/flowscribe/callback/<anything>`` -> ``/flowscribe/callback/<redacted>``, the prefix in any spelling."""
    path = _TOKEN_IN_PATH.sub(f"{CALLBACK_PATH}/{REDACTED}", path)
    if "%" in path:
        path = _TOKEN_IN_ENCODED_PATH.sub(f"{CALLBACK_PATH}/{REDACTED}", path)
    return path


class Redactor:
    """Removes the callback path's last segment and every configured token, or any 8
    characters of one, from text, however percent-encoded."""

    def __init__(self, tokens: Iterable[str]) -> None:
        # Configured tokens wherever they appear: a URL whose prefix was encoded,
        # a line cut short, an exception that quotes match_info, ...
        self._tokens = TokensRedactor(tokens)

    def __call__(self, text: str) -> str:
        return self._tokens(redact_path(text))


class RedactingFormatter(logging.Formatter):
    """Formats with the wrapped formatter, then redacts the finished text."""

    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self.inner, self._redact = inner, redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self.inner.format(record))


@contextlib.contextmanager
def redacted_logs(tokens: Iterable[str], logger: logging.Logger | None = None) -> Iterator[None]:
    """While inside, every handler of ``logger`` (default: root) writes redacted text."""
    logger = logger or logging.getLogger()
    redact = Redactor(tokens)
    wrapped: list[tuple[logging.Handler, logging.Formatter | None]] = []
    for handler in logger.handlers:
        wrapped.append((handler, handler.formatter))
        handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter(), redact))
    try:
        yield
    finally:
        for handler, formatter in wrapped:
            handler.setFormatter(formatter)
