"""The one way decoding fails."""

from __future__ import annotations


class PayloadDecodeError(Exception):
    """A body that cannot become a Payload.

    str(e) is a one-line human reason (with the path where msgspec gives one).
    """


def error(reason: str) -> PayloadDecodeError:
    # One line, bounded: reasons end up in logs and dead-letter headers.
    return PayloadDecodeError(" ".join(reason.split())[:500])
