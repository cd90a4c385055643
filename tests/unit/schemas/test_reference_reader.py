"""Apache Avro's reference implementation (the ``avro`` package) reads what the codec writes."""

from __future__ import annotations

import io
import json
from typing import Any

import avro.io
import avro.schema
import pytest

from undertow.schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, default_store

from .samples import sample_records

STORE = default_store()


@pytest.mark.parametrize("type_name", STORE.types())
def test_avro_reads_single_object_records(type_name: str) -> None:
    version = STORE.latest(type_name)
    schema = avro.schema.parse(json.dumps(version.schema))
    reader = avro.io.DatumReader(schema)
    codec = AvroCodec()
    for record in sample_records(version.schema):
        data = codec.encode(type_name, record)
        assert data[:2] == SINGLE_OBJECT_MAGIC
        assert data[2:10] == version.fingerprint
        read = reader.read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
        assert _plain(read) == _plain(_untuple(record))


def _untuple(value: Any) -> Any:
    """fastavro's ``(name, record)`` union values are plain records to the avro package."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return _untuple(value[1])
    if isinstance(value, dict):
        return {k: _untuple(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untuple(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """Compare logical values by their text, since the two libraries map them alike but not
    identically (both give UUID and aware datetimes)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value) if not isinstance(value, bool | int | float | bytes | type(None)) else value
