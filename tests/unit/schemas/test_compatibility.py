"""Schemas evolve compatibly: every version reads its predecessors' data and vice versa.

Checked two ways: Apache Avro's own compatibility checker, and by writing sample records with
one version and reading them with the other.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from undertow.schemas.codec import AVRO_DIR, default_store

from .samples import sample_records

STORE = default_store()
PAIRS = [
    (old, new) for t in STORE.types() for old, new in itertools.combinations(STORE.versions(t), 2)
]
LOCK = AVRO_DIR / "fingerprints.json"


def test_there_is_history_to_check() -> None:
    assert PAIRS, "no type has two versions: the compatibility checks would be empty"


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0].path.stem}-{p[1].path.stem}")
def test_backward_and_forward_compatible(pair: Any) -> None:
    old, new = pair
    old_s, new_s = (avro.schema.parse(json.dumps(v.schema)) for v in (old, new))
    checker = ReaderWriterCompatibilityChecker()
    backward = checker.get_compatibility(reader=new_s, writer=old_s)
    forward = checker.get_compatibility(reader=old_s, writer=new_s)
    assert backward.compatibility is SchemaCompatibilityType.compatible, backward.messages
    assert forward.compatibility is SchemaCompatibilityType.compatible, forward.messages


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0].path.stem}-{p[1].path.stem}")
def test_records_cross_versions(pair: Any) -> None:
    old, new = pair
    for writer, reader in ((old, new), (new, old)):
        for record in sample_records(writer.schema):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer.parsed, record)
            buf.seek(0)
            read = fastavro.schemaless_reader(
                buf, writer.parsed, reader.parsed, return_record_name=True
            )
            assert read["event_id"] == record["event_id"]


def test_published_versions_are_never_edited() -> None:
    """A shipped version's fingerprint is fixed: editing it in place breaks stored data.

    New versions are added to fingerprints.json when they are published.
    """
    published = json.loads(LOCK.read_text())
    current = {v.path.name: v.fingerprint.hex() for t in STORE.types() for v in STORE.versions(t)}
    for name, fp in published.items():
        assert current.get(name) == fp, f"{name} changed after it was published; add a new version"
    unpublished = sorted(set(current) - set(published))
    assert not unpublished, f"add {unpublished} to {Path(LOCK).name}"
