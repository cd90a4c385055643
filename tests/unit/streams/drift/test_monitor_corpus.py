"""The monitor on realistic traffic: chatterbot-corpus texts embedded with the real MiniLM.

A tech-support assistant's topics are the baseline; general-knowledge questions (trivia,
sports, history, ...) are the shift. 300 short texts are embedded once; streams resample
them with a seed. The model's vectors may differ in the last bits between machines, so these
tests assert ranges; the exact indices are asserted on synthetic vectors (test_monitor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from undertow.streams.drift import BaselineConfig, CalibrationConfig, DriftMonitor, build_baseline
from undertow.streams.drift.baseline import Baseline
from undertow.streams.drift.corpus import ASSISTANT_TOPICS, GENERAL_TOPICS, load_topics

from .fixtures import SEGMENT

SHIFT_AT = 2000


@dataclass
class Corpus:
    texts: list[str]
    vectors: np.ndarray
    usual: np.ndarray  # row indices of the baseline topics' texts
    new: np.ndarray  # of the shift topics' texts

    def events(self, seed: int, n: int, share: float = 0.0) -> list[dict[str, Any]]:
        """``n`` prompt events; from SHIFT_AT on, a ``share`` of them from the new topics."""
        rng = np.random.default_rng(seed)
        rows = self.usual[rng.integers(0, len(self.usual), n)]
        moved = (np.arange(n) >= SHIFT_AT) & (rng.random(n) < share)
        rows[moved] = self.new[rng.integers(0, len(self.new), int(moved.sum()))]
        return [
            {
                "event_id": f"{'new' if r in self.new_set else 'usual'}-{i}",
                "event_type": "prompt",
                "embedding": self.vectors[r],
                **SEGMENT,
            }
            for i, r in enumerate(rows.tolist())
        ]

    @property
    def new_set(self) -> set[int]:
        return set(self.new.tolist())


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    from undertow.streams.scoring.base import create_embedder

    usual = [u for u in load_topics(ASSISTANT_TOPICS) if len(u.text) <= 100][::3][:200]
    general = load_topics(GENERAL_TOPICS, exclude={u.text for u in load_topics(ASSISTANT_TOPICS)})
    new = [u for u in general if len(u.text) <= 100][::4][:100]
    texts = [u.text for u in usual + new]
    vectors = create_embedder("minilm").embed(texts)
    return Corpus(texts, vectors, np.arange(len(usual)), np.arange(len(usual), len(texts)))


@pytest.fixture(scope="module")
def baseline(corpus: Corpus) -> Baseline:
    rows = corpus.usual[np.random.default_rng(1).integers(0, len(corpus.usual), 3000)]
    return build_baseline(
        SEGMENT,
        embeddings={"prompt": corpus.vectors[rows]},
        texts={"prompt": [corpus.texts[r] for r in rows]},
        config=BaselineConfig(topics=16, reference_size=256),
        calibration=CalibrationConfig(events=300_000, statistics=("topic_surprise",), seed=3),
    )


def test_the_baseline_topics_are_named_by_their_texts(corpus: Corpus, baseline: Baseline) -> None:
    topics = baseline.embeddings["prompt"].topics
    usual_texts = {corpus.texts[r] for r in corpus.usual}
    assert len(topics) == 16
    assert all(set(t.examples) <= usual_texts and t.label[4:9] in t.examples[0] for t in topics)
    assert baseline.calibration["topic_surprise.prompt"].met


def test_a_long_stable_stream_raises_no_alert(corpus: Corpus, baseline: Baseline) -> None:
    monitor = DriftMonitor([baseline])
    events = corpus.events(seed=10, n=20_000)
    found = [
        d for i in range(0, len(events), 200) for d in monitor.update_many(events[i : i + 200])
    ]
    assert [d for d in found if d["detected"]] == []


@pytest.mark.parametrize(("share", "within"), [(1.0, 60), (0.3, 300)])
def test_a_topic_shift_is_detected_and_explained(
    corpus: Corpus, baseline: Baseline, share: float, within: int
) -> None:
    events = corpus.events(seed=20, n=SHIFT_AT + 2000, share=share)
    found = [d for d in DriftMonitor([baseline]).update_many(events) if d["detected"]]
    assert found, "the shift was not detected"
    d = found[0]
    confirmed = int(d["attributes"]["confirmed_at"])
    assert SHIFT_AT <= confirmed < SHIFT_AT + within
    # the examples are the drifted window's farthest events: the new topics' texts
    assert sum(e.startswith("new-") for e in d["example_event_ids"]) >= 4
    labels = {t.label for t in baseline.embeddings["prompt"].topics}
    assert len(d["nearest_topics"]) == 3 and set(d["nearest_topics"]) <= labels
    assert d["attributes"]["departed_topics"].startswith('["t')
