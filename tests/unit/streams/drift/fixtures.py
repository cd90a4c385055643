"""Seeded synthetic traffic for the drift tests: unit vectors around topic centres, scored
events shaped like ``ScoredEvent`` records, and a small baseline built from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.drift import BaselineConfig, CalibrationConfig, build_baseline
from undertow.streams.drift.baseline import Baseline

DIM = 24
SEGMENT = {"app": "chat", "model": "tiny", "prompt_version": "v1"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def centres(seed: int, k: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    """``k`` random unit topic centres."""
    c = np.random.default_rng(seed).normal(size=(k, dim))
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def around(
    rng: np.random.Generator, topics: npt.NDArray[np.float32], n: int, spread: float = 0.35
) -> npt.NDArray[np.float32]:
    """``n`` unit vectors, each near a topic centre drawn uniformly."""
    picked = topics[rng.integers(0, len(topics), n)]
    x = picked + spread * rng.normal(size=picked.shape) / np.sqrt(topics.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def scored_event(i: int, vector: npt.NDArray[np.float32] | None, **fields: Any) -> dict[str, Any]:
    """A prompt ``ScoredEvent``-shaped dict number ``i`` of the test segment."""
    out: dict[str, Any] = {
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "trace_id": f"{i:032x}",
        "span_id": f"{i:016x}",
        "event_time": T0 + timedelta(milliseconds=i),
        "environment": "production",
        "event_type": "prompt",
        "scores": {},
        "embedding": None if vector is None else vector.tolist(),
        **SEGMENT,
    }
    out.update(fields)
    return out


def synthetic_baseline(
    topics: npt.NDArray[np.float32],
    rows: int = 2000,
    seed: int = 1,
    calibrate: bool = True,
    scalars: dict[str, Any] | None = None,
) -> Baseline:
    """A baseline of ``rows`` prompt vectors around ``topics`` (calibrated on 300,000 replayed
    values at one false alarm per 100,000 when ``calibrate``)."""
    rng = np.random.default_rng(seed)
    return build_baseline(
        SEGMENT,
        embeddings={"prompt": around(rng, topics, rows)},
        texts={"prompt": [f"text {i}" for i in range(rows)]},
        scalars=scalars,
        config=BaselineConfig(topics=8, reference_size=256),
        calibration=CalibrationConfig(events=300_000, statistics=("topic_surprise",), seed=2)
        if calibrate
        else None,
        created_at=T0,
    )
