"""Timestamps: everything we compare or store is timezone-aware."""

from __future__ import annotations

import datetime


def as_utc(value: datetime.datetime) -> datetime.datetime:
    """``value`` itself if it has a timezone; a naive one is taken to be UTC (what our senders mean)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
