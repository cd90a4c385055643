"""The drift monitor on seeded synthetic traffic: exact detections, no alarms on stable
traffic, drift events that fit the schema, and a state that resumes exactly."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from undertow.schemas.codec import AvroCodec
from undertow.streams.drift import DriftMonitor, MonitorConfig
from undertow.streams.drift.base import DriftError
from undertow.streams.drift.baseline import Baseline
from undertow.streams.drift.quantity import DetectorSpec

from .fixtures import around, centres, scored_event, synthetic_baseline

TOPICS = centres(0, 6)
USUAL, NEW = TOPICS[:4], TOPICS[4:]
SHIFT_AT = 3000


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    latency = np.random.default_rng(8).lognormal(5.0, 0.4, size=2000)
    return synthetic_baseline(USUAL, scalars={"latency_ms": latency})


def stable(seed: int, n: int, start: int = 0) -> list[dict[str, Any]]:
    vectors = around(np.random.default_rng(seed), USUAL, n)
    return [scored_event(start + i, v) for i, v in enumerate(vectors)]


def shifted(seed: int = 5, n: int = 2000) -> list[dict[str, Any]]:
    """SHIFT_AT stable events, then ``n`` of which a third come from two new topics."""
    rng = np.random.default_rng(seed)
    before = around(rng, USUAL, SHIFT_AT)
    after = around(rng, TOPICS, n)  # 2 of 6 topics are new
    return [scored_event(i, v) for i, v in enumerate(np.vstack([before, after]))]


def test_a_long_stable_stream_raises_no_drift_event(baseline: Baseline) -> None:
    monitor = DriftMonitor([baseline])
    events = stable(11, 30_000)
    found = []
    for start in range(0, len(events), 500):
        found += monitor.update_many(events[start : start + 500])
    assert found == []
    assert monitor.segments[baseline.segment_key].events == 30_000


def test_a_planted_topic_shift_is_detected_where_expected(baseline: Baseline) -> None:
    events = shifted()
    found = DriftMonitor([baseline]).update_many(events)
    assert [(d["stream"], d["detected"], d["attributes"]["confirmed_at"]) for d in found] == [
        ("topic_surprise.prompt", True, "3026")
    ]
    d = found[0]
    assert d["detector"] == "adwin+novelty" and d["statistic"] > d["threshold"]
    assert d["attributes"]["detected_at"] == "3006" and float(d["attributes"]["p_value"]) <= 0.005
    assert d["segment"] == "app=chat/model=tiny/prompt=v1" and d["segment_fields"]["app"] == "chat"
    assert d["baseline_version"] == baseline.version and d["window_reference"] == 256
    # the examples are the window's events farthest from the baseline: the new topics'
    shifted_ids = {e["event_id"] for e in events[SHIFT_AT:]}
    new_ids = {
        e["event_id"]
        for e in events[SHIFT_AT:]
        if np.max(NEW @ np.asarray(e["embedding"])) > np.max(USUAL @ np.asarray(e["embedding"]))
    }
    assert len(d["example_event_ids"]) == 5 and set(d["example_event_ids"]) <= new_ids
    # the window tested: the 20 events after the detection (window_from="detection")
    assert d["window_current"] == 20 and d["attributes"]["change_start"] == "3002"
    assert shifted_ids
    assert len(d["nearest_topics"]) == 3 and all(t.startswith("t0") for t in d["nearest_topics"])
    departed = json.loads(d["attributes"]["departed_topics"])
    assert departed and "->" in departed[0]
    assert float(d["attributes"]["share_beyond_baseline_p99"]) > 0.1
    assert (
        d["parent_span_id"] == events[3026]["span_id"]
        and d["event_time"] == events[3026]["event_time"]
    )


def test_drift_events_fit_the_avro_schema(baseline: Baseline) -> None:
    (d,) = DriftMonitor([baseline]).update_many(shifted())
    codec = AvroCodec()
    decoded = codec.decode(codec.encode("drift_event", d), "drift_event").record
    assert (
        str(decoded["event_id"]) == d["event_id"]
        and decoded["nearest_topics"] == d["nearest_topics"]
    )


def test_drift_event_ids_are_deterministic(baseline: Baseline) -> None:
    first = DriftMonitor([baseline]).update_many(shifted())
    again = DriftMonitor([baseline]).update_many(shifted())
    assert [d["event_id"] for d in first] == [d["event_id"] for d in again]


def test_batches_and_single_events_decide_alike(baseline: Baseline) -> None:
    events = shifted(seed=6)
    batched = DriftMonitor([baseline]).update_many(events)
    one = DriftMonitor([baseline])
    single = [d for e in events for d in one.update(e)]
    assert batched == single and batched


@pytest.mark.parametrize("cuts", [[1500], [3000, 3010, 3015], list(range(2990, 3060, 7))])
def test_save_and_restore_mid_stream_gives_the_same_drift_events(
    baseline: Baseline, cuts: list[int]
) -> None:
    events = shifted(seed=7, n=4000)
    uninterrupted = DriftMonitor([baseline]).update_many(events)
    assert uninterrupted
    monitor, found, begin = DriftMonitor([baseline]), [], 0
    for cut in [*cuts, len(events)]:
        found += monitor.update_many(events[begin:cut])
        state = json.loads(json.dumps(monitor.to_state(), allow_nan=False))
        monitor = DriftMonitor.from_state([baseline], state)
        begin = cut
    assert found == uninterrupted


def test_a_pending_detection_survives_a_restart(baseline: Baseline) -> None:
    events = shifted()
    monitor = DriftMonitor([baseline])
    assert monitor.update_many(events[:3010]) == []  # fired at 3006, confirms at 3026
    stream = monitor.segments[baseline.segment_key].streams["topic_surprise.prompt"]
    assert stream.pending is not None and stream.pending.detected_at == 3006
    restored = DriftMonitor.from_state([baseline], json.loads(json.dumps(monitor.to_state())))
    (d,) = restored.update_many(events[3010:])
    assert d["attributes"]["confirmed_at"] == "3026"


def test_a_latency_shift_is_found_on_its_scalar_stream(baseline: Baseline) -> None:
    rng = np.random.default_rng(9)
    latency = np.concatenate([rng.lognormal(5.0, 0.4, 3000), rng.lognormal(5.6, 0.4, 1000)])
    events = [
        scored_event(i, None, event_type="completion", latency_ms=float(x))
        for i, x in enumerate(latency)
    ]
    found = DriftMonitor([baseline]).update_many(events)
    assert [(d["stream"], d["detector"], d["detected"]) for d in found] == [
        ("latency_ms", "page_hinkley+rank", True)
    ]
    assert int(found[0]["attributes"]["confirmed_at"]) - 3000 < 80
    assert found[0]["nearest_topics"] == []


@pytest.mark.parametrize("statistic", ["topic_surprise", "topic_distance", "embedding_distance"])
@pytest.mark.parametrize("confirm", ["mmd+novelty", "mmd", "novelty", "none"])
def test_every_statistic_and_confirmation_finds_the_shift(
    baseline: Baseline, statistic: Any, confirm: Any
) -> None:
    config = MonitorConfig(
        statistic=statistic,
        confirm=confirm,
        use_calibration=False,
        embedding_detector=DetectorSpec("adwin", {"delta": 0.001}),
        quantities=(),
    )
    found = [d for d in DriftMonitor([baseline], config).update_many(shifted()) if d["detected"]]
    assert found and 3000 <= int(found[0]["attributes"]["confirmed_at"]) < 3400
    assert found[0]["stream"] == f"{statistic}.prompt"


def test_other_segments_and_bad_embeddings_are_counted_not_raised(baseline: Baseline) -> None:
    monitor = DriftMonitor([baseline])
    good = stable(1, 3)
    odd = [
        scored_event(10, USUAL[0], app="other"),
        scored_event(11, np.zeros(USUAL.shape[1], dtype=np.float32)),
        {**scored_event(12, None), "embedding": [1.0, 2.0]},
        {**scored_event(13, None), "embedding": [float("nan")] * USUAL.shape[1]},
    ]
    assert monitor.update_many(good + odd) == []
    assert monitor.unbaselined == {"app=other/model=tiny/prompt=v1": 1}
    assert monitor.segments[baseline.segment_key].invalid == 3


def test_a_new_baseline_restarts_its_segment_and_another_config_is_refused(
    baseline: Baseline,
) -> None:
    monitor = DriftMonitor([baseline])
    monitor.update_many(stable(2, 100))
    state = json.loads(json.dumps(monitor.to_state()))
    newer = synthetic_baseline(USUAL, rows=500, seed=3, calibrate=False)
    restored = DriftMonitor.from_state([newer], state)
    assert restored.discarded == [baseline.segment_key] and restored.segments == {}
    with pytest.raises(DriftError, match="another MonitorConfig"):
        DriftMonitor.from_state([baseline], state, MonitorConfig(window=400))
    with pytest.raises(DriftError, match=r"undertow\.drift\.monitor"):
        DriftMonitor.from_state([baseline], {"segments": {}})


def test_configuration_and_baselines_are_checked(baseline: Baseline) -> None:
    with pytest.raises(DriftError, match="segment fields"):
        DriftMonitor([baseline], MonitorConfig(segment_fields=("app",))).update(stable(1, 1)[0])
    with pytest.raises(DriftError, match="two baselines"):
        DriftMonitor([baseline, baseline])
    with pytest.raises(DriftError, match="min_window"):
        MonitorConfig(min_window=1)


def test_segment_states_restore_one_segment_at_a_time(baseline: Baseline) -> None:
    events = shifted(seed=7, n=4000)
    uninterrupted = DriftMonitor([baseline]).update_many(events)
    first = DriftMonitor([baseline])
    head = first.update_many(events[:3010])
    table = json.loads(json.dumps(first.segment_states()))  # a Faust table keyed by segment
    second = DriftMonitor([baseline])
    assert second.restore_segment(baseline.segment_key, table[baseline.segment_key])
    assert head + second.update_many(events[3010:]) == uninterrupted
    other = DriftMonitor([baseline], MonitorConfig(examples=2))
    with pytest.raises(DriftError, match="another MonitorConfig"):
        other.restore_segment(baseline.segment_key, table[baseline.segment_key])
