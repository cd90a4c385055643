"""Baselines: built from arrays or rows, summarised faithfully, versioned, saved, loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from undertow.streams.drift import BaselineConfig, CalibrationConfig, build_baseline
from undertow.streams.drift.base import DriftError
from undertow.streams.drift.baseline import Baseline, build_baselines, content_version

from .fixtures import SEGMENT, T0, around, centres, scored_event

CONFIG = BaselineConfig(topics=4, reference_size=100)


@pytest.fixture(scope="module")
def topics() -> np.ndarray:
    return centres(0, 4)


@pytest.fixture(scope="module")
def baseline(topics: np.ndarray) -> Baseline:
    rng = np.random.default_rng(1)
    vectors = around(rng, topics, 600, spread=0.2)
    texts = [f"topic {int(np.argmax(topics @ v))} text {i}" for i, v in enumerate(vectors)]
    return build_baseline(
        SEGMENT,
        embeddings={"prompt": vectors},
        texts={"prompt": texts},
        scalars={"latency_ms": rng.lognormal(5.0, 0.5, size=600), "toxicity.prompt": [0.0] * 600},
        config=CONFIG,
        calibration=None,
        source={"table": "undertow.scored", "from": "2026-01-01", "to": "2026-01-08"},
        created_at=T0,
    )


def test_the_topics_are_the_planted_clusters(baseline: Baseline, topics: np.ndarray) -> None:
    profile = baseline.embeddings["prompt"]
    assert profile.count == 600 and profile.dim == topics.shape[1]
    found = profile.topic_matrix
    assert np.all(np.max(found @ topics.T, axis=0) > 0.95)  # each planted centre was found
    assert sum(t.share for t in profile.topics) == pytest.approx(1.0)
    shares = [t.share for t in profile.topics]
    assert shares == sorted(shares, reverse=True)


def test_topics_are_labelled_with_their_nearest_texts(
    baseline: Baseline, topics: np.ndarray
) -> None:
    for topic in baseline.embeddings["prompt"].topics:
        planted = int(np.argmax(topics @ topic.centroid))
        assert len(topic.examples) == 3
        assert all(e.startswith(f"topic {planted} ") for e in topic.examples)
        assert topic.label.startswith(f"t{topic.index:02d} topic {planted} text")


def test_spread_and_distances(baseline: Baseline) -> None:
    profile = baseline.embeddings["prompt"]
    assert 0.0 < profile.centroid_distance.quantile(0.5) < profile.centroid_distance.quantile(0.95)
    assert len(profile.topic_distance.levels) == 1001
    # out-of-fold distances to the nearest topic are below the distances to the one centroid
    assert profile.topic_distance.mean < profile.centroid_distance.mean
    assert profile.reference.shape == (100, profile.dim)
    assert profile.reference_topic_distance.shape == (100,)


def test_surprise_is_about_exponential_on_baseline_like_traffic(
    baseline: Baseline, topics: np.ndarray
) -> None:
    profile = baseline.embeddings["prompt"]
    fresh = around(np.random.default_rng(9), topics, 2000, spread=0.2)
    _, distance, _ = profile.distances(fresh)
    s = profile.surprise(distance)
    assert s.min() >= 0.0 and s.max() <= np.log(601) + 1e-9
    assert 0.8 < s.mean() < 1.25 and np.mean(s > np.log(100)) < 0.03
    far = profile.surprise([10.0])
    assert far[0] == pytest.approx(np.log(601))


def test_scalars_are_summarised_and_standardised(baseline: Baseline) -> None:
    latency = baseline.scalars["latency_ms"]
    assert latency.quantity.transform == "log1p"
    assert latency.summary.quantile(0.5) == pytest.approx(np.exp(5.0), rel=0.1)
    z = latency.standardise(latency.reference)
    assert abs(float(z.mean())) < 0.2 and 0.8 < float(z.std()) < 1.2
    toxicity = baseline.scalars["toxicity.prompt"]
    assert toxicity.scale == 1.0  # a constant stream: no division by zero


def test_json_round_trip_keeps_everything(baseline: Baseline, tmp_path: Path) -> None:
    path = baseline.save(tmp_path / "baseline.json")
    loaded = Baseline.load(path)
    assert loaded.dumps() == baseline.dumps()
    assert loaded.version == baseline.version == content_version(baseline)
    assert loaded.created_at == T0.isoformat()
    assert loaded.segment_key == "app=chat/model=tiny/prompt=v1"
    assert loaded.source["table"] == "undertow.scored"
    a, b = loaded.embeddings["prompt"], baseline.embeddings["prompt"]
    assert np.array_equal(a.reference, b.reference) and np.array_equal(a.centroid, b.centroid)
    assert loaded.config["topics"] == 4


def test_the_version_hashes_content_not_creation_time(
    baseline: Baseline, topics: np.ndarray
) -> None:
    rng = np.random.default_rng(1)
    vectors = around(rng, topics, 600, spread=0.2)
    texts = [f"topic {int(np.argmax(topics @ v))} text {i}" for i, v in enumerate(vectors)]
    kwargs = dict(
        embeddings={"prompt": vectors},
        texts={"prompt": texts},
        scalars={"latency_ms": rng.lognormal(5.0, 0.5, size=600), "toxicity.prompt": [0.0] * 600},
        config=CONFIG,
        calibration=None,
        source={"table": "undertow.scored", "from": "2026-01-01", "to": "2026-01-08"},
    )
    again = build_baseline(SEGMENT, **kwargs)  # type: ignore[arg-type]
    assert again.version == baseline.version and again.created_at != baseline.created_at
    other = build_baseline({**SEGMENT, "prompt_version": "v2"}, **kwargs)  # type: ignore[arg-type]
    assert other.version != baseline.version


def test_an_edited_document_is_refused(baseline: Baseline) -> None:
    data = json.loads(baseline.dumps())
    data["scalars"]["latency_ms"]["center"] += 1.0
    with pytest.raises(DriftError, match="edited or damaged"):
        Baseline.from_dict(data)
    with pytest.raises(DriftError, match="format"):
        Baseline.from_dict({**data, "format": "something else"})
    with pytest.raises(DriftError, match="JSON"):
        Baseline.loads("{not json")


def test_calibration_is_recorded_per_stream(topics: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    b = build_baseline(
        SEGMENT,
        embeddings={"prompt": around(rng, topics, 300)},
        scalars={"latency_ms": rng.lognormal(5.0, 0.5, size=300)},
        config=CONFIG,
        calibration=CalibrationConfig(events=40_000, target_rate=1e-3),
    )
    assert set(b.calibration) == {
        "topic_surprise.prompt",
        "topic_distance.prompt",
        "embedding_distance.prompt",
        "latency_ms",
    }
    assert b.calibration["latency_ms"].detector == "page_hinkley"
    assert all(c.met and c.events == 40_000 for c in b.calibration.values())
    assert Baseline.loads(b.dumps()).calibration == b.calibration


def test_building_from_rows_groups_by_segment(topics: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for i, v in enumerate(around(rng, topics, 300)):
        prompt_version = "v1" if i % 3 else "v2"
        rows.append(scored_event(i, v, prompt_version=prompt_version, text=f"t{i}"))
        rows.append(
            scored_event(
                10_000 + i,
                None,
                event_type="completion",
                prompt_version=prompt_version,
                latency_ms=float(100 + i),
                output_tokens=20 + i % 7,
                scores={"toxicity": 0.01},
            )
        )
    baselines = build_baselines(rows, config=CONFIG, calibration=None)
    assert sorted(baselines) == ["app=chat/model=tiny/prompt=v1", "app=chat/model=tiny/prompt=v2"]
    v1 = baselines["app=chat/model=tiny/prompt=v1"]
    assert v1.embeddings["prompt"].count == 200
    assert set(v1.scalars) == {"latency_ms", "output_tokens", "toxicity.completion"}
    assert v1.embeddings["prompt"].topics[0].examples[0].startswith("t")


def test_too_few_rows_leave_the_part_out_and_bad_input_is_refused(topics: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    b = build_baseline(
        SEGMENT, embeddings={"prompt": around(rng, topics, 10)}, config=CONFIG, calibration=None
    )
    assert b.embeddings == {}
    with pytest.raises(DriftError, match="NaN"):
        build_baseline(SEGMENT, embeddings={"prompt": np.full((30, 4), np.nan)}, calibration=None)
    with pytest.raises(DriftError, match="no quantity"):
        build_baseline(SEGMENT, scalars={"mood": [1.0] * 30}, calibration=None)
    with pytest.raises(DriftError, match="texts"):
        build_baseline(
            SEGMENT,
            embeddings={"prompt": around(rng, topics, 30)},
            texts={"prompt": ["a"]},
            calibration=None,
        )
