"""The chatterbot corpus as topic traffic."""

from __future__ import annotations

import pytest

from undertow.streams.drift.base import DriftError
from undertow.streams.drift.corpus import (
    ASSISTANT_TOPICS,
    GENERAL_TOPICS,
    available_topics,
    load_topics,
)


def test_the_topic_lists_are_disjoint_and_exist() -> None:
    assert not set(ASSISTANT_TOPICS) & set(GENERAL_TOPICS)
    assert set(ASSISTANT_TOPICS) | set(GENERAL_TOPICS) == set(available_topics())


def test_utterances_are_distinct_texts_with_their_topic() -> None:
    usual = load_topics(ASSISTANT_TOPICS)
    general = load_topics(GENERAL_TOPICS, exclude={u.text for u in usual})
    assert (len(usual), len(general)) == (965, 931)
    assert all(any(c.isalnum() for c in u.text) for u in usual + general)
    assert len({u.text for u in usual + general}) == len(usual) + len(general)
    assert {u.topic for u in usual} == set(ASSISTANT_TOPICS)
    assert usual[0].topic == "tech_support" and usual[0].text


def test_an_unknown_topic_is_a_drift_error() -> None:
    with pytest.raises(DriftError, match="chatterbot topic"):
        load_topics(["cooking-with-lasers"])
