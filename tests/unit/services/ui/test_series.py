"""Rows shaped into chart series (services/ui/series.py): pure functions, no warehouse."""

from __future__ import annotations

import itertools

import pytest

from undertow.services.ui import UIError
from undertow.services.ui.series import (
    HISTOGRAM_BINS,
    RANGES,
    Window,
    completions,
    drift,
    histogram,
    iso,
    number,
    span_order,
    traffic,
    waterfall,
)
from undertow.services.warehouse.rows import DRIFT_TRACE_DETECTOR

NOW_MS = 1_772_366_430_500  # 2026-03-01 12:00:30.500 UTC: not on a bucket edge


@pytest.mark.parametrize("name", sorted(RANGES))
def test_windows_cover_their_range_with_aligned_buckets(name: str) -> None:
    w = Window.last(name, NOW_MS)
    span_s, bucket_s = RANGES[name]
    buckets = w.buckets()
    assert w.end_ms - w.start_ms == span_s * 1000
    assert all(b % (bucket_s * 1000) == 0 for b in buckets)
    assert buckets[0] <= w.start_ms < buckets[0] + w.bucket_ms
    assert buckets[-1] < w.end_ms <= buckets[-1] + w.bucket_ms
    assert all(b - a == w.bucket_ms for a, b in itertools.pairwise(buckets))
    assert w.parameters() == {
        "start_us": w.start_ms * 1000,
        "end_us": w.end_ms * 1000,
        "bucket_ms": w.bucket_ms,
    }


def test_an_unknown_range_names_the_known_ones() -> None:
    with pytest.raises(UIError, match=r"expected a range among .*'1h'.*got '2h'"):
        Window.last("2h", NOW_MS)


def test_iso_is_utc_with_milliseconds() -> None:
    assert iso(NOW_MS) == "2026-03-01 12:00:30.500"


def test_traffic_fills_empty_buckets_and_orders_types_by_pipeline() -> None:
    w = Window.last("15m", NOW_MS)
    b = w.buckets()
    rows = [(b[2], "completion", 3), (b[0], "prompt", 2), (b[2], "prompt", 1), (b[4], "custom", 9)]
    out = traffic(w, rows)
    assert [s["name"] for s in out["series"]] == ["prompt", "completion", "custom"]
    prompt = out["series"][0]["y"]
    assert len(prompt) == len(b) == len(out["t"])
    assert prompt[0] == 2 and prompt[2] == 1 and sum(prompt) == 3
    assert out["total"] == 15


def test_completions_leave_latency_gaps_but_zero_cost() -> None:
    w = Window.last("15m", NOW_MS)
    b = w.buckets()
    out = completions(w, [(b[1], 2, 0.5, 100.0, 180.0), (b[3], 0, 0.25, None, float("nan"))])
    assert out["cost_usd"][1] == 0.5 and out["cost_usd"][0] == 0.0
    assert out["completions"][:4] == [0, 2, 0, 0]
    assert out["latency_p50_ms"][:4] == [None, 100.0, None, None]
    assert out["latency_p95_ms"][3] is None  # NaN is not JSON


def test_histogram_bins_scores_and_rejects_a_bin_out_of_range() -> None:
    out = histogram([("toxicity", 0, 4), ("toxicity", HISTOGRAM_BINS - 1, 1), ("injection", 3, 2)])
    assert len(out["centers"]) == HISTOGRAM_BINS
    assert out["centers"][0] == pytest.approx(0.5 / HISTOGRAM_BINS)
    assert out["counts"]["toxicity"][0] == 4 and sum(out["counts"]["toxicity"]) == 5
    assert out["counts"]["injection"][3] == 2
    with pytest.raises(UIError, match="expected a histogram bin"):
        histogram([("toxicity", HISTOGRAM_BINS, 1)])


def test_drift_groups_series_and_picks_out_detections() -> None:
    rows = [
        ("seg-b", "toxicity", "ph", NOW_MS, 0.1, 0.5, False),
        ("seg-a", "embedding", "adwin", NOW_MS, 0.2, 0.4, False),
        ("seg-a", "embedding", "adwin", NOW_MS + 1000, 0.6, 0.4, True),
    ]
    out = drift(rows)
    assert [(s["segment"], len(s["t"])) for s in out] == [("seg-a", 2), ("seg-b", 1)]
    assert out[0]["detections"] == {"t": [iso(NOW_MS + 1000)], "statistic": [0.6]}
    assert out[1]["detections"]["t"] == []


def test_a_trace_series_carries_its_streams_detections_at_the_traced_value() -> None:
    rows = [
        ("seg", "topic", DRIFT_TRACE_DETECTOR, NOW_MS + 1000 * i, float(i), 0.0, False)
        for i in range(4)
    ]
    rows.append(("seg", "topic", "adwin", NOW_MS + 2500, 9.0, 1.0, True))
    rows.append(("other", "topic", "adwin", NOW_MS + 500, 9.0, 1.0, True))  # another segment
    other, adwin, trace = drift(rows)
    assert (trace["detector"], trace["trace"], adwin["trace"]) == (
        DRIFT_TRACE_DETECTOR,
        True,
        False,
    )
    # on the drawn line: halfway between the points at 2 s (2.0) and 3 s (3.0)
    assert trace["detections"] == {"t": [iso(NOW_MS + 2500)], "statistic": [2.5]}
    assert adwin["detections"]["statistic"] == [9.0] and other["segment"] == "other"


def test_spans_order_by_time_then_pipeline_step() -> None:
    spans = [
        {"time_ms": 5, "event_type": "feedback", "span_id": "d"},
        {"time_ms": 1, "event_type": "completion", "span_id": "c"},
        {"time_ms": 1, "event_type": "prompt", "span_id": "a"},
    ]
    assert [s["span_id"] for s in sorted(spans, key=span_order)] == ["a", "c", "d"]


def test_waterfall_starts_a_span_its_latency_before_its_time() -> None:
    spans = [
        {"time_ms": 1000, "event_type": "prompt", "latency_ms": None},
        {"time_ms": 1100, "event_type": "retrieval", "latency_ms": 80.0},
        {"time_ms": 2500, "event_type": "completion", "latency_ms": 1200.0},
    ]
    out = waterfall(spans)
    assert out["start_ms"] == [0, 20, 300]
    assert out["duration_ms"] == [0.0, 80.0, 1200.0]
    assert out["labels"] == ["1. prompt", "2. retrieval", "3. completion"]
    assert waterfall([])["labels"] == []


def test_number_maps_null_and_nan_to_none() -> None:
    assert (number(None), number(float("nan")), number(3)) == (None, None, 3.0)
