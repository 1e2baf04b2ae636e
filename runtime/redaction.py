"""Secrets out of text we write: every one is replaced by the same marker."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

REDACTED = "<redacted>"
# Fewest consecutive characters of a random token that are redacted wherever they appear.
FRAGMENT = 8
# Any FRAGMENT consecutive characters of a token hold one of its 4-character
# pieces that start at a multiple of 4: finding none of those (one search of
# literals) clears a text without running the token pattern, which is slow.
_PROBE = FRAGMENT // 2
# What may follow a token's fragment and still be the token (its alphabet, or an escape).
_TOKEN_RUN = r"(?:[A-Za-z0-9._~-]|%(?:25)*[0-9A-Fa-f]{2})*"


class SecretsRedactor:
    """Replaces each of ``secrets``, wherever it appears in a text, by ``REDACTED``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        literal = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, literal))) if literal else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern is not None else text


def any_spelling(text: str) -> str:
    """A pattern for ``text`` with each character as itself or percent-encoded, even repeatedly (``%2566``)."""
    return "".join(
        f"(?:{re.escape(c)}|%(?:25)*(?i:{ord(c):02x}))" if ord(c) < 128 else re.escape(c) for c in text
    )


def _decoded(text: str) -> str:
    """``text`` percent-decoded until it no longer changes (a few rounds at most)."""
    for _ in range(4):
        if "%" not in text:
            break
        plain = urllib.parse.unquote(text)
        if plain == text:
            break
        text = plain
    return text


class TokensRedactor:
    """Replaces random tokens (the gateway's callback tokens) in any spelling, and any
    FRAGMENT consecutive characters of one, to the end of the token-like run: text quoted
    from a request may be percent-encoded (once or more) or cut short (aiohttp quotes 100
    bytes of an over-long line). Only for random secrets: 8 characters of a word or a URL
    would match innocent text."""

    def __init__(self, tokens: Iterable[str]) -> None:
        tokens = {t for t in tokens if t}
        fragments = sorted({t[i:i + FRAGMENT] for t in tokens for i in range(max(1, len(t) - FRAGMENT + 1))})
        probes = sorted({t[i:i + _PROBE] for t in tokens for i in range(0, max(1, len(t) - _PROBE + 1), _PROBE)})
        self._probe = re.compile("|".join(map(re.escape, probes))) if probes else None
        self._pattern = re.compile("(?:" + "|".join(map(any_spelling, fragments)) + ")" + _TOKEN_RUN)

    def __call__(self, text: str) -> str:
        if self._probe is not None and self._probe.search(_decoded(text)):
            text = self._pattern.sub(REDACTED, text)
        return text
