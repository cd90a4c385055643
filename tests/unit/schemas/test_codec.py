"""The codec: round trips for every schema, fingerprints, older versions, clear errors."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest

from undertow.schemas.codec import (
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    DecodeError,
    EncodeError,
    SchemaStore,
    crc64_fingerprint,
    default_store,
)
from undertow.schemas.events import ENVELOPE_FIELDS, event, event_body, event_type

from .samples import sample_records

STORE = default_store()
ALL_VERSIONS = [v for t in STORE.types() for v in STORE.versions(t)]
LATEST = [STORE.latest(t) for t in STORE.types()]


def test_every_architecture_record_type_ships() -> None:
    assert set(STORE.types()) == {
        "event",
        "scored_event",
        "drift_event",
        "alert",
        "action",
        "registry_record",
        "dead_letter",
    }


@pytest.mark.parametrize("version", LATEST, ids=lambda v: v.type_name)
def test_every_record_carries_the_envelope(version: Any) -> None:
    names = [f["name"] for f in version.schema["fields"]]
    assert tuple(names[: len(ENVELOPE_FIELDS)]) == ENVELOPE_FIELDS
    assert ENVELOPE_FIELDS[:3] == ("event_id", "trace_id", "span_id")


@pytest.mark.parametrize("version", LATEST, ids=lambda v: v.type_name)
def test_round_trip_every_schema(version: Any) -> None:
    codec = AvroCodec()
    samples = sample_records(version.schema)
    assert samples
    for record in samples:
        data = codec.encode(version.type_name, record)
        assert data[:2] == SINGLE_OBJECT_MAGIC
        assert data[2:10] == version.fingerprint
        decoded = codec.decode(data, version.type_name)
        assert decoded.type_name == version.type_name
        assert decoded.writer_version == version.version
        assert decoded.record == record


def test_event_round_trip_covers_each_body_type() -> None:
    samples = sample_records(STORE.latest("event").schema)
    assert sorted(event_type(s) for s in samples) == [
        "completion",
        "feedback",
        "prompt",
        "retrieval",
    ]


def _spec_crc64(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification's reference code computes it."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_fingerprint_is_crc64_of_canonical_form_little_endian() -> None:
    assert crc64_fingerprint("string") == struct.pack("<Q", _spec_crc64(b'"string"'))
    event = STORE.latest("event")
    canonical = fastavro.schema.to_parsing_canonical_form(event.schema).encode()
    assert event.fingerprint == struct.pack("<Q", _spec_crc64(canonical))
    for version in ALL_VERSIONS:
        assert STORE.by_fingerprint(version.fingerprint) is version


def test_older_version_is_read_into_the_current_schema() -> None:
    v1, v2 = STORE.versions("event")[:2]
    old = event(
        "completion",
        {"model": "m", "text": "hello", "latency_ms": 12.5, "output_tokens": 3},
        app="chat",
    )
    buf = io.BytesIO()
    buf.write(v1.header)
    fastavro.schemaless_writer(buf, v1.parsed, old)
    decoded = AvroCodec().decode(buf.getvalue(), "event")
    assert decoded.writer_version == 1
    body = event_body(decoded.record)
    assert body["text"] == "hello"
    assert body["output_tokens"] == 3
    # Fields added in v2 come back with their defaults.
    assert body["cached_tokens"] is None
    assert body["time_to_first_token_ms"] is None
    assert v2.version == 2


def test_builders_make_valid_events() -> None:
    codec = AvroCodec()
    rec = event("prompt", {"messages": [{"role": "user", "content": "hi"}]}, app="chat")
    decoded = codec.decode(codec.encode("event", rec)).record
    assert event_type(decoded) == "prompt"
    assert len(decoded["trace_id"]) == 32 and len(decoded["span_id"]) == 16
    assert str(decoded["event_id"]) == rec["event_id"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "unknown framing"),
        (b"\x7b\x22json\x22: 1}", "unknown framing"),
        (SINGLE_OBJECT_MAGIC + b"\x01\x02", "truncated single-object header"),
        (
            SINGLE_OBJECT_MAGIC + b"\xde\xad\xbe\xef\x00\x00\x00\x00body",
            "unknown schema fingerprint",
        ),
        (b"\x00\x00\x00\x00\x07body", "no schema registry is configured"),
    ],
)
def test_bad_bytes_raise_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        AvroCodec().decode(data)


def test_truncated_and_padded_bodies_raise_decode_error() -> None:
    codec = AvroCodec()
    data = codec.encode("event", event("feedback", {"score": 1.0, "comment": "good"}, app="a"))
    for cut in (11, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError, match=r"cannot read undertow\.Event"):
            codec.decode(data[:cut])
    with pytest.raises(DecodeError, match="unexpected bytes after"):
        codec.decode(data + b"\x00")


def test_wrong_type_is_refused() -> None:
    codec = AvroCodec()
    data = codec.encode("dead_letter", sample_records(STORE.latest("dead_letter").schema)[0])
    with pytest.raises(DecodeError, match="expected a event record, got dead_letter"):
        codec.decode(data, "event")


def test_invalid_record_raises_encode_error_naming_the_field() -> None:
    codec = AvroCodec()
    rec = event("feedback", {"score": 1.0}, app="a")
    with pytest.raises(EncodeError, match="app"):
        codec.encode("event", {**rec, "app": 7})
    with pytest.raises(EncodeError, match="more fields"):
        codec.encode("event", {**rec, "apps": "typo"})
    with pytest.raises(Exception, match="unknown record type"):
        codec.encode("nope", rec)


def test_confluent_wire_format_with_a_registry() -> None:
    # confluent-kafka ships an in-process registry for tests ("mock://"); the framing,
    # registration and lookup are ours.
    codec = AvroCodec.for_registry("mock://undertow-unit")
    registry = codec.registry
    assert registry is not None
    assert codec.wire_format == "confluent"
    rec = event("completion", {"model": "m", "text": "t", "latency_ms": 1.0}, app="a")
    data = codec.encode("event", rec, subject="undertow.events.v1-value")
    assert data[0] == 0
    schema_id = struct.unpack(">I", data[1:5])[0]
    registered = json.loads(registry.get_schema(schema_id).schema_str)
    assert registered["name"] == "Event"
    # A fresh codec (another process) reads it through the registry.
    decoded = AvroCodec(registry=registry).decode(data, "event")
    assert decoded.writer_version == STORE.latest("event").version
    assert event_body(decoded.record)["text"] == "t"


def test_store_rejects_badly_named_files(tmp_path: Any) -> None:
    (tmp_path / "event.avsc").write_text(json.dumps({"type": "record", "name": "E", "fields": []}))
    with pytest.raises(Exception, match="expected a name like"):
        SchemaStore(tmp_path)
