"""The ingest processor's decoding step and its dead letters (no broker, no warehouse)."""

from __future__ import annotations

import uuid

from undertow.schemas.codec import AvroCodec
from undertow.services.traffic import sample_traces
from undertow.streams.dead_letters import dead_letter, dead_letter_id
from undertow.streams.records import SourceRecord
from undertow.streams.roles.ingest import decode_batch

TOPIC = "undertow.events.v1"


def test_undecodable_records_become_dead_letters_and_the_rest_flows_on() -> None:
    codec = AvroCodec()
    good = list(sample_traces(2, seed=4))
    encoded = [codec.encode("event", r) for r in good]
    key = good[0]["trace_id"].encode()
    records = [
        SourceRecord(TOPIC, 1, 10, key, encoded[0]),
        SourceRecord(TOPIC, 1, 11, key, b"\x01\x02 not avro"),
        SourceRecord(TOPIC, 1, 12, key, encoded[1][: len(encoded[1]) // 2]),
        SourceRecord(TOPIC, 1, 13, None, None),
        SourceRecord(TOPIC, 1, 14, key, encoded[1]),
    ]
    batch = decode_batch(records, codec)
    assert [i.offset for i in batch.items] == [10, 14]
    assert str(batch.items[0].record["event_id"]) == good[0]["event_id"]
    letters = {d["source_offset"]: d for d in batch.dead_letters}
    assert sorted(letters) == [11, 12, 13]
    assert letters[11]["reason"].startswith("unknown framing")
    assert letters[12]["payload"] == encoded[1][: len(encoded[1]) // 2]
    assert letters[13]["payload"] == b"" and "tombstone" in letters[13]["reason"]
    for letter in batch.dead_letters:  # each one is a valid DeadLetter record
        assert (
            codec.decode(codec.encode("dead_letter", letter), "dead_letter").record["key"]
            == (letter["key"])
        )


def test_a_dead_letter_keeps_ids_for_joins_and_has_a_stable_id() -> None:
    record = next(iter(sample_traces(1, seed=5)))
    letter = dead_letter(
        reason="x" * 5000,
        error_type="ValueError",
        processor="ingest",
        topic=TOPIC,
        partition=3,
        offset=7,
        key=b"not-a-trace-id",
        payload=b"\x00",
        record=record,
    )
    assert letter["trace_id"] == record["trace_id"]
    assert letter["span_id"] == record["span_id"]
    assert letter["app"] == record["app"]
    assert len(letter["reason"]) == 1000
    assert letter["event_id"] == dead_letter_id("ingest", TOPIC, 3, 7)
    assert uuid.UUID(letter["event_id"]).version == 5
