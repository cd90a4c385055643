"""What the bus helpers treat as a passing broker condition worth asking again about."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from undertow.services.bus import _transient


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_LEADER_FOR_PARTITION,  # seen on a watermark query of a fresh topic
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
    ],
)
def test_leadership_changes_are_transient(code: int) -> None:
    assert _transient(KafkaError(code))


@pytest.mark.parametrize(
    "error",
    [
        KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED),
        KafkaError(KafkaError.INVALID_CONFIG),
        None,
    ],
)
def test_other_errors_are_not(error: object) -> None:
    assert not _transient(error)
