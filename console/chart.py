"""Callbacks over time as a stacked bar chart, drawn on the server as SVG (no script, no library).

The template draws what ``bars`` computes: one bar per time bucket, one
segment per outcome, in a fixed coordinate space the browser scales.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from store.outcomes import RECORDED as OUTCOMES

WIDTH = 1000
HEIGHT = 200
MAX_BARS = 180


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    outcome: str
    y: float
    height: float


@dataclasses.dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    start: datetime.datetime
    counts: dict[str, int]
    segments: list[Segment]


@dataclasses.dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    peak: int
    bucket_minutes: int
    ticks: list[str]  # times (UTC) at 0, 1/6, ... 6/6 of the span, spaced evenly under the chart
    totals: dict[str, int]
    width: int = WIDTH
    height: int = HEIGHT


def bucket_seconds(hours: int) -> int:
    """Minutes for up to 3 hours; longer spans in wider buckets, so at most MAX_BARS bars."""
    return max(60, (hours * 3600 // MAX_BARS) // 60 * 60)


def bars(counts: Iterable[tuple[datetime.datetime, str, int]], *, now: datetime.datetime,
         hours: int) -> Chart:
    step = bucket_seconds(hours)
    end = int(now.timestamp()) // step * step + step
    start = end - hours * 3600
    n = (end - start) // step
    by_bucket: dict[int, dict[str, int]] = {}
    totals = dict.fromkeys(OUTCOMES, 0)
    for at, outcome, count in counts:
        index = (int(at.timestamp()) - start) // step
        if 0 <= index < n:
            by_bucket.setdefault(index, {})[outcome] = count
            totals[outcome] = totals.get(outcome, 0) + count
    peak = max((sum(c.values()) for c in by_bucket.values()), default=0)
    width = WIDTH / n
    result = []
    for index in range(n):
        bucket = by_bucket.get(index, {})
        y = float(HEIGHT)
        segments = []
        for outcome in OUTCOMES:
            count = bucket.get(outcome, 0)
            if count:
                height = HEIGHT * count / peak
                y -= height
                segments.append(Segment(outcome, round(y, 2), round(height, 2)))
        result.append(Bar(round(index * width, 2), round(max(width - 0.5, 0.5), 2),
                          datetime.datetime.fromtimestamp(start + index * step, datetime.UTC), bucket, segments))
    # Labels are HTML under the chart, not SVG text: they stay legible however far the chart is scaled.
    ticks = [datetime.datetime.fromtimestamp(start + k * (end - start) // 6, datetime.UTC).strftime("%H:%M")
             for k in range(7)]
    return Chart(result, peak, step // 60, ticks, totals)
