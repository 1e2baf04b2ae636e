"""Secrets out of text we write: every one is replaced by the same marker."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "<redacted>"


class SecretsRedactor:
    """Replaces each of ``secrets``, wherever it appears in a text, by ``REDACTED``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        literal = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, literal))) if literal else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern is not None else text
