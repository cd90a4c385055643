"""Building events from captured calls: caps, the truncated flag, hashing, sampling
(services/sdk/records.py)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import pytest

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import new_trace_id
from undertow.services.sdk.config import SdkConfig, SdkConfigError
from undertow.services.sdk.records import (
    COMPLETION,
    FEEDBACK,
    PROMPT,
    RETRIEVAL,
    RecordBuilder,
    RecordError,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
KEY = "builder-key-123"


def builder(**overrides: Any) -> RecordBuilder:
    settings: dict[str, Any] = {
        "app": "unit",
        "bootstrap_servers": "localhost:9092",
        "hash_key": KEY,
        **overrides,
    }
    return RecordBuilder(SdkConfig(**settings), AvroCodec())


def completion(text: object = "ok", **fields: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "model": "m",
        "latency_ms": 5.0,
        "input_tokens": 7,
        "output_tokens": 3,
        "cached_tokens": None,
        "ttft": None,
        "finish_reason": "stop",
        "user_id": "user-1",
        "session_id": None,
        "attributes": None,
        **fields,
    }
    return (
        COMPLETION, time.time_ns(), TRACE, SPAN, None, values["model"], text,
        values["latency_ms"], values["input_tokens"], values["output_tokens"],
        values["cached_tokens"], values["ttft"], values["finish_reason"], None, None, None,
        None, values["user_id"], values["session_id"], values["attributes"],
    )  # fmt: skip


def decode(value: bytes) -> dict[str, Any]:
    return AvroCodec().decode(value, "event").record


def test_completion_round_trips_with_key_and_fields() -> None:
    key, value = builder().encode(completion("hello"))
    record = decode(value)
    assert key == TRACE.encode()
    assert record["trace_id"] == TRACE and record["span_id"] == SPAN
    name, body = record["body"]
    assert name == "undertow.Completion"
    assert (body["text"], body["input_tokens"], body["output_tokens"]) == ("hello", 7, 3)
    assert body["truncated"] is False


def test_user_id_is_hmac_hashed_never_raw() -> None:
    _, value = builder().encode(completion(user_id="alice@example.com", session_id=42))
    record = decode(value)
    expected = hmac.new(KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert record["user_hash"] == expected
    assert record["session_hash"] == hmac.new(KEY.encode(), b"42", hashlib.sha256).hexdigest()
    assert b"alice" not in value


def test_without_hash_key_ids_are_dropped() -> None:
    _, value = builder(hash_key=None).encode(completion(user_id="alice"))
    assert decode(value)["user_hash"] is None
    assert b"alice" not in value


def test_long_text_is_cut_to_the_byte_cap_and_flagged() -> None:
    b = builder(max_text_bytes=1024)
    text = "é" * 5000  # two bytes each
    _, value = b.encode(completion(text))
    body = decode(value)["body"][1]
    assert body["truncated"] is True
    assert len(body["text"].encode()) <= 1024
    assert body["text"] == "é" * 512
    assert b.truncated == 1


def test_text_at_the_cap_is_not_flagged() -> None:
    _, value = builder(max_text_bytes=1024).encode(completion("a" * 1024))
    body = decode(value)["body"][1]
    assert body["truncated"] is False and len(body["text"]) == 1024


def test_documents_are_capped_in_count_and_text() -> None:
    docs = [{"id": i, "score": 0.5, "text": "x" * 100, "source": "kb"} for i in range(10)]
    item = (
        RETRIEVAL,
        time.time_ns(),
        TRACE,
        SPAN,
        None,
        "q",
        docs,
        "faq",
        3.0,
        5,
        None,
        None,
        None,
    )
    _, value = builder(max_documents=4, max_text_bytes=64).encode(item)
    body = decode(value)["body"][1]
    assert [d["id"] for d in body["documents"]] == ["0", "1", "2", "3"]
    assert all(len(d["text"]) == 64 for d in body["documents"])
    assert body["truncated"] is True


def test_messages_keep_first_and_latest_when_capped() -> None:
    messages = [{"role": "system", "content": "sys"}] + [
        {"role": "user", "content": f"m{i}"} for i in range(10)
    ]
    item = (PROMPT, time.time_ns(), TRACE, SPAN, None, messages, "m", None, None, None, None,
            None, None)  # fmt: skip
    _, value = builder(max_messages=4).encode(item)
    body = decode(value)["body"][1]
    assert [m["content"] for m in body["messages"]] == ["sys", "m7", "m8", "m9"]
    assert body["truncated"] is True


def test_content_parts_are_joined() -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}],
        }
    ]
    item = (PROMPT, time.time_ns(), TRACE, SPAN, None, messages, None, None, None, None, None,
            None, None)  # fmt: skip
    _, value = builder().encode(item)
    assert decode(value)["body"][1]["messages"][0]["content"] == "look\n[image_url]"


def test_redaction_applies_to_texts_and_attributes() -> None:
    item = completion(
        "mail bob@example.com card 4111 1111 1111 1111", attributes={"contact": "a@b.io"}
    )
    _, value = builder().encode(item)
    record = decode(value)
    assert record["body"][1]["text"] == "mail [EMAIL] card [CARD]"
    assert record["attributes"] == {"contact": "[EMAIL]"}


def test_feedback_gets_a_fresh_span_id() -> None:
    item = (FEEDBACK, time.time_ns(), TRACE, None, SPAN, 1.0, "good", None, "user", None, None,
            None)  # fmt: skip
    _, value = builder().encode(item)
    record = decode(value)
    assert len(record["span_id"]) == 16 and record["parent_span_id"] == SPAN
    assert record["body"] == (
        "undertow.Feedback",
        {"score": 1.0, "label": "good", "comment": None, "source": "user"},
    )


@pytest.mark.parametrize(
    "item",
    [
        completion(123),
        completion("SECRET", input_tokens="7"),
        completion("SECRET", latency_ms=None),
        completion("SECRET", attributes=["not", "a", "dict"]),
        completion("SECRET", input_tokens=2**40),
        completion("SECRET \ud800"),  # a lone surrogate: refused by the Avro encoder
    ],
)
def test_bad_values_raise_record_error_without_quoting_text(item: tuple[Any, ...]) -> None:
    with pytest.raises(RecordError) as info:
        builder().encode(item)
    assert "SECRET" not in str(info.value)


def test_oversized_event_is_cut_until_it_fits() -> None:
    docs = [{"id": str(i), "text": "y" * 2000} for i in range(40)]
    item = (RETRIEVAL, time.time_ns(), TRACE, SPAN, None, "q", docs, "s", 1.0, None, None, None,
            None)  # fmt: skip
    _, value = builder(max_event_bytes=20_000, max_text_bytes=4096).encode(item)
    assert len(value) <= 20_000
    assert decode(value)["body"][1]["truncated"] is True


def test_sampling_is_deterministic_by_trace_id() -> None:
    ids = [new_trace_id() for _ in range(4000)]
    first = builder(sample_rate=0.25)
    second = builder(sample_rate=0.25)
    kept = [first.sampled(t) for t in ids]
    assert kept == [second.sampled(t) for t in ids]
    assert 0.2 < sum(kept) / len(ids) < 0.3
    # A lower rate keeps a subset of what a higher rate keeps (same rule as OpenTelemetry).
    lower = builder(sample_rate=0.1)
    assert all(k for t, k in zip(ids, kept, strict=True) if lower.sampled(t))
    assert builder(sample_rate=0.0).sampled(ids[0]) is False
    assert builder(sample_rate=1.0).sampled("not hex") is True
    assert builder(sample_rate=0.5).sampled("not hex") == builder(sample_rate=0.5).sampled(
        "not hex"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"app": ""},
        {"sample_rate": 1.5},
        {"queue_size": 0},
        {"hash_key": "short"},
        {"bootstrap_servers": None},
        {"builtin_redactions": ("ssn",)},
    ],
)
def test_invalid_config_raises_at_construction(overrides: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"app": "unit", "bootstrap_servers": "localhost:9092", **overrides}
    with pytest.raises(SdkConfigError):
        SdkConfig(**settings)
