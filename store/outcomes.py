"""What became of a callback: the outcomes the store decides (and its ledger records)."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    INGESTED = "ingested"
    DUPLICATE = "duplicate"  # same body as a callback already stored
    SUPERSEDED = "superseded"  # a newer version of the analysis is stored
    JOB_FAILED = "job_failed"
    REDELIVERED = "redelivered"  # this very message was stored before; no row is written


# Those a ledger row can hold (flowscribe.callbacks.outcome); a redelivery writes no row.
RECORDED = tuple(outcome.value for outcome in Outcome if outcome is not Outcome.REDELIVERED)
