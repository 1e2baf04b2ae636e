"""Exceptions in words: one line that can travel in a log field or an AMQP header."""

from __future__ import annotations


def describe(exc: BaseException, limit: int = 2000) -> str:
    """``ErrorClass: message``, one line, bounded (it travels in an AMQP header)."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
