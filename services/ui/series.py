"""Rows from the warehouse shaped into what the dashboard's charts draw: pure functions.

Time is carried as epoch milliseconds (UTC) from the SQL to here, so no timezone guessing
happens on the way; :func:`iso` turns it into the ``YYYY-MM-DD HH:MM:SS`` strings plotly.js
reads as dates. Buckets are epoch-aligned multiples of the bucket width, computed the same way
in SQL (``intDiv(ms, bucket) * bucket``) and in :meth:`Window.buckets`, so missing buckets are
filled with zeros here rather than left as gaps that a line chart would bridge.

>>> w = Window.last("15m", now_ms=1_800_000_000_000)
>>> (w.bucket_ms, len(w.buckets()))
(60000, 15)
>>> fill(w.buckets()[:3], {w.buckets()[1]: 4})
[0, 4, 0]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from undertow.services.ui import UIError
from undertow.services.warehouse.rows import DRIFT_TRACE_DETECTOR

RangeName = Literal["15m", "1h", "6h", "24h", "7d", "30d"]
# Range name -> (span, bucket width), in seconds: about 15 to 170 points per line.
RANGES: dict[str, tuple[int, int]] = {
    "15m": (15 * 60, 60),
    "1h": (3600, 60),
    "6h": (6 * 3600, 300),
    "24h": (24 * 3600, 900),
    "7d": (7 * 86400, 3600),
    "30d": (30 * 86400, 6 * 3600),
}
HISTOGRAM_BINS = 20  # score distributions: bins of 0.05 over [0, 1]
EVENT_TYPES = ("prompt", "retrieval", "completion", "feedback")
V = TypeVar("V")


@dataclass(frozen=True)
class Window:
    """A time range ``[start_ms, end_ms)`` and the bucket width its charts use."""

    start_ms: int
    end_ms: int
    bucket_ms: int

    @classmethod
    def last(cls, name: str, now_ms: int) -> Window:
        """The range ``name`` (a key of :data:`RANGES`) ending now."""
        try:
            span_s, bucket_s = RANGES[name]
        except KeyError:
            raise UIError(f"expected a range among {sorted(RANGES)}, got {name!r}") from None
        return cls(start_ms=now_ms - span_s * 1000, end_ms=now_ms, bucket_ms=bucket_s * 1000)

    def buckets(self) -> list[int]:
        """Start of every bucket that overlaps the window, in order."""
        first = self.start_ms // self.bucket_ms * self.bucket_ms
        return list(range(first, self.end_ms, self.bucket_ms))

    def parameters(self) -> dict[str, int]:
        """The bound parameters the window's SQL takes."""
        return {
            "start_us": self.start_ms * 1000,
            "end_us": self.end_ms * 1000,
            "bucket_ms": self.bucket_ms,
        }


def iso(ms: int | float) -> str:
    """Epoch milliseconds as a UTC date string plotly.js reads (``2026-03-01 12:00:00.000``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def fill(buckets: Sequence[int], values: Mapping[int, V], default: Any = 0) -> list[Any]:
    """One value per bucket: the row's value, or ``default`` where no row fell in it."""
    return [values.get(b, default) for b in buckets]


def traffic(window: Window, rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Events per bucket by event type from ``(bucket_ms, event_type, count)`` rows; every
    event type seen gets a line, known types in pipeline order, others after them by name."""
    by_type: dict[str, dict[int, int]] = {}
    for bucket, kind, count in rows:
        by_type.setdefault(kind, {})[int(bucket)] = int(count)
    order = [t for t in EVENT_TYPES if t in by_type] + sorted(set(by_type) - set(EVENT_TYPES))
    buckets = window.buckets()
    return {
        "t": [iso(b) for b in buckets],
        "series": [{"name": kind, "y": fill(buckets, by_type[kind])} for kind in order],
        "total": sum(sum(v.values()) for v in by_type.values()),
    }


def completions(window: Window, rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Cost and latency per bucket from ``(bucket_ms, completions, cost_usd, p50, p95)`` rows;
    a bucket without completions has cost 0 and no latency (None: a gap, not a zero)."""
    seen = {int(r[0]): r for r in rows}
    buckets = window.buckets()
    return {
        "t": [iso(b) for b in buckets],
        "completions": [int(seen[b][1]) if b in seen else 0 for b in buckets],
        "cost_usd": [float(seen[b][2]) if b in seen else 0.0 for b in buckets],
        "latency_p50_ms": [number(seen[b][3]) if b in seen else None for b in buckets],
        "latency_p95_ms": [number(seen[b][4]) if b in seen else None for b in buckets],
    }


def histogram(rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Score distributions from ``(score_name, bin, count)`` rows, ``bin`` in
    ``0..HISTOGRAM_BINS-1`` (a score of exactly 1 belongs to the last bin)."""
    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    counts: dict[str, list[int]] = {}
    for name, bin_, count in rows:
        if not 0 <= int(bin_) < HISTOGRAM_BINS:
            raise UIError(f"expected a histogram bin in 0..{HISTOGRAM_BINS - 1}, got {bin_!r}")
        counts.setdefault(name, [0] * HISTOGRAM_BINS)[int(bin_)] += int(count)
    return {
        "centers": [round((a + b) / 2, 4) for a, b in itertools.pairwise(edges)],
        "width": 1 / HISTOGRAM_BINS,
        "counts": counts,
    }


def drift(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """One series per (segment, stream, detector) from rows
    ``(segment, stream, detector, time_ms, statistic, threshold, detected)`` sorted by time,
    with the detections picked out so the chart can mark them. A trace series (the drift
    role's recent mean, ``DRIFT_TRACE_DETECTOR``) has no detections of its own: it carries its
    stream's detections by any detector, at the traced value of that moment."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for segment, stream, detector, ms, statistic, threshold, detected in rows:
        g = groups.setdefault(
            (segment, stream, detector),
            {
                "segment": segment,
                "stream": stream,
                "detector": detector,
                "trace": detector == DRIFT_TRACE_DETECTOR,  # no threshold, no detections
                "t": [],
                "statistic": [],
                "threshold": [],
                "detections": {"t": [], "statistic": []},
            },
        )
        g["t"].append(iso(ms))
        g["statistic"].append(number(statistic))
        g["threshold"].append(number(threshold))
        if detected:
            g["detections"]["t"].append(iso(ms))
            g["detections"]["statistic"].append(number(statistic))
    for (segment, stream, detector), g in groups.items():
        if detector != DRIFT_TRACE_DETECTOR or not g["t"]:
            continue
        for (s2, t2, d2), other in sorted(groups.items()):
            if (s2, t2) != (segment, stream) or d2 == detector:
                continue
            for t in other["detections"]["t"]:
                g["detections"]["t"].append(t)
                g["detections"]["statistic"].append(_traced_at(g, t))
    return [groups[k] for k in sorted(groups)]


def _traced_at(series: Mapping[str, Any], moment: str) -> float | None:
    """The traced value at ``moment`` (ISO time) on the line as drawn: interpolated between
    the points around it, the first or last point's value outside them."""
    times, values = series["t"], series["statistic"]
    after = next((i for i, t in enumerate(times) if t > moment), len(times))
    if after == 0 or after == len(times):
        return values[0] if after == 0 else values[-1]  # type: ignore[no-any-return]
    a, b = values[after - 1], values[after]
    if a is None or b is None:
        return a if b is None else b  # type: ignore[no-any-return]
    t0, t1, t = (datetime.fromisoformat(x) for x in (times[after - 1], times[after], moment))
    return float(a + (t - t0) / (t1 - t0) * (b - a))


# Order of the span types within one instant: a prompt comes before what answers it.
_SPAN_ORDER = {kind: i for i, kind in enumerate(EVENT_TYPES)}


def span_order(span: Mapping[str, Any]) -> tuple[int, int, str]:
    """Sort key of a span: time, then prompt < retrieval < completion < feedback."""
    return (int(span["time_ms"]), _SPAN_ORDER.get(str(span["event_type"]), 9), str(span["span_id"]))


def waterfall(spans: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Bars of a trace's waterfall: each span starts at its offset from the trace's first event
    and lasts its latency. Events are stamped when they happened (a completion when its answer
    was in), so a span with a latency starts ``latency_ms`` before its time; spans without one
    (prompt, feedback) are instants, drawn with a minimal width."""
    if not spans:
        return {"labels": [], "start_ms": [], "duration_ms": [], "event_types": []}
    starts = [int(s["time_ms"]) - float(s.get("latency_ms") or 0.0) for s in spans]
    origin = min(starts)
    return {
        "labels": [f"{i + 1}. {s['event_type']}" for i, s in enumerate(spans)],
        "start_ms": [round(t - origin, 3) for t in starts],
        "duration_ms": [float(s.get("latency_ms") or 0.0) for s in spans],
        "event_types": [str(s["event_type"]) for s in spans],
    }


def number(value: Any) -> float | None:
    """A float for JSON, None for NULL or NaN (JSON has no NaN)."""
    if value is None:
        return None
    f = float(value)
    return None if f != f else f
