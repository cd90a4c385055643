"""Read and write Undertow records by the shipped Avro schemas.

Two framings on the wire:

* **Avro single-object encoding** (the default): ``C3 01`` + the writer schema's 8-byte
  CRC-64-AVRO fingerprint (little-endian) + the Avro binary body. The fingerprint names the
  writer schema among every shipped version, so an old record is read into the newest schema
  of its type by Avro schema resolution.
* **Confluent wire format** (when a schema registry is configured): ``00`` + the 4-byte
  big-endian schema id + the body. The writer schema comes from the registry.

Records are plain dicts as fastavro reads and writes them. A field whose type is a union of
several records (the ``body`` of an ``Event``) holds a ``(full_name, dict)`` tuple, for
example ``("undertow.Completion", {...})``, in both directions.

>>> codec = AvroCodec()
>>> data = codec.encode("feedback_example", {})  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from undertow.errors import UndertowError

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
AVRO_DIR = Path(__file__).parent / "avro"
_FILE_NAME = re.compile(r"^(?P<type>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


class SchemaError(UndertowError):
    """The shipped schemas are missing, malformed or inconsistent."""


class EncodeError(UndertowError):
    """A record does not match its schema."""


class DecodeError(UndertowError):
    """Bytes that cannot be read as an Undertow record: bad header, unknown schema, bad body."""


@dataclass(frozen=True)
class SchemaVersion:
    """One shipped version of one record type."""

    type_name: str
    version: int
    full_name: str
    schema: dict[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    fingerprint: bytes = field(repr=False)
    path: Path

    @property
    def header(self) -> bytes:
        return SINGLE_OBJECT_MAGIC + self.fingerprint


@dataclass(frozen=True)
class Decoded:
    """A decoded record, with the type and the writer version it came in."""

    type_name: str
    writer_version: int
    record: dict[str, Any]


def crc64_fingerprint(schema: dict[str, Any] | str) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of a schema's parsing canonical form, little-endian."""
    # fastavro renders the 64-bit value as its little-endian bytes, the header's order.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


class SchemaStore:
    """Every shipped schema version, found by type name or by fingerprint.

    Files are named ``<type>.v<N>.avsc``; the highest ``N`` of a type is its current version.
    """

    def __init__(self, directory: Path = AVRO_DIR) -> None:
        self.directory = directory
        self._by_type: dict[str, list[SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        paths = sorted(directory.glob("*.avsc"))
        if not paths:
            raise SchemaError(f"no .avsc files in {directory}")
        for path in paths:
            self._add(path)
        for versions in self._by_type.values():
            versions.sort(key=lambda v: v.version)

    def _add(self, path: Path) -> None:
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise SchemaError(f"{path.name}: expected a name like 'event.v2.avsc'")
        try:
            schema = json.loads(path.read_text())
            parsed = fastavro.parse_schema(schema)
        except (json.JSONDecodeError, fastavro.schema.SchemaParseException) as exc:
            raise SchemaError(f"{path.name}: not a valid Avro schema: {exc}") from exc
        version = SchemaVersion(
            type_name=match["type"],
            version=int(match["version"]),
            full_name=f"{schema.get('namespace', '')}.{schema['name']}".lstrip("."),
            schema=schema,
            parsed=parsed,
            fingerprint=crc64_fingerprint(schema),
            path=path,
        )
        clash = self._by_fingerprint.get(version.fingerprint)
        if clash is not None:
            raise SchemaError(f"{path.name} has the same canonical form as {clash.path.name}")
        others = self._by_type.setdefault(version.type_name, [])
        if any(o.full_name != version.full_name for o in others):
            raise SchemaError(f"{path.name}: record name {version.full_name} differs from v1")
        others.append(version)
        self._by_fingerprint[version.fingerprint] = version

    def types(self) -> list[str]:
        """The record types, e.g. ``['action', 'alert', 'dead_letter', 'event', ...]``."""
        return sorted(self._by_type)

    def versions(self, type_name: str) -> list[SchemaVersion]:
        """Every shipped version of a type, oldest first."""
        try:
            return list(self._by_type[type_name])
        except KeyError:
            raise SchemaError(
                f"unknown record type {type_name!r}; expected one of {self.types()}"
            ) from None

    def latest(self, type_name: str) -> SchemaVersion:
        return self.versions(type_name)[-1]

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fp)

    def by_full_name(self, full_name: str) -> str | None:
        """The type name whose record is called ``full_name`` (e.g. ``undertow.Alert``)."""
        for type_name, versions in self._by_type.items():
            if versions[0].full_name == full_name:
                return type_name
        return None


@cache
def default_store() -> SchemaStore:
    """The schemas shipped with the package, loaded once."""
    return SchemaStore()


class AvroCodec:
    """Encodes and decodes records; single-object by default, Confluent with a registry.

    ``registry`` is a ``confluent_kafka.schema_registry.SchemaRegistryClient``. Schemas are
    registered under the record-name subject (``undertow.Event``) unless ``encode`` is given
    a ``subject`` (``<topic>-value`` for the topic-name strategy).
    """

    def __init__(
        self,
        store: SchemaStore | None = None,
        registry: SchemaRegistryClient | None = None,
    ) -> None:
        self.store = store or default_store()
        self.registry = registry
        self._ids: dict[tuple[str, str], int] = {}
        self._registry_writers: dict[int, tuple[SchemaVersion, Any]] = {}

    @classmethod
    def for_registry(cls, url: str | None, config: Mapping[str, str] | None = None) -> AvroCodec:
        """A codec in the Confluent wire format when ``url`` is set, single-object otherwise.

        ``config`` adds client settings such as ``basic.auth.user.info``.
        """
        if not url:
            return cls()
        from confluent_kafka.schema_registry import SchemaRegistryClient

        return cls(registry=SchemaRegistryClient.new_client({"url": url, **(config or {})}))

    @property
    def wire_format(self) -> str:
        return "confluent" if self.registry is not None else "single-object"

    # -- encode ---------------------------------------------------------------------------

    def encode(
        self, type_name: str, record: Mapping[str, Any], subject: str | None = None
    ) -> bytes:
        """Serialise ``record`` with the current schema of ``type_name``."""
        version = self.store.latest(type_name)
        header = (
            version.header
            if self.registry is None
            else self._confluent_header(version, subject or version.full_name)
        )
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, version.parsed, record, strict_allow_default=True)
        except Exception as exc:  # fastavro raises many types for bad data
            raise EncodeError(_explain_invalid(version, record, exc)) from exc
        return buf.getvalue()

    def _confluent_header(self, version: SchemaVersion, subject: str) -> bytes:
        key = (subject, version.full_name + f".v{version.version}")
        schema_id = self._ids.get(key)
        if schema_id is None:
            from confluent_kafka.schema_registry import Schema

            assert self.registry is not None
            try:
                schema_id = self.registry.register_schema(
                    subject, Schema(json.dumps(version.schema), "AVRO")
                )
            except Exception as exc:
                raise EncodeError(
                    f"schema registry refused {version.full_name} v{version.version} "
                    f"under subject {subject!r}: {exc}"
                ) from exc
            self._ids[key] = schema_id
            self._registry_writers[schema_id] = (version, version.parsed)
        return CONFLUENT_MAGIC + struct.pack(">I", schema_id)

    # -- decode ---------------------------------------------------------------------------

    def decode(self, data: bytes, type_name: str | None = None) -> Decoded:
        """Read a record of either framing into the current schema of its type.

        ``type_name``, when given, is the type the caller expects; a record of another type
        raises DecodeError. Every failure raises DecodeError.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError(f"truncated single-object header: {len(data)} bytes")
            writer = self.store.by_fingerprint(data[2:10])
            if writer is None:
                raise DecodeError(
                    f"unknown schema fingerprint {data[2:10].hex()}: "
                    "not one of the shipped Undertow schemas"
                )
            writer_parsed, offset = writer.parsed, 10
        elif data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            schema_id = struct.unpack(">I", data[1:5])[0]
            writer, writer_parsed = self._registry_writer(schema_id)
            offset = 5
        else:
            raise DecodeError(
                f"unknown framing: first bytes {data[:2].hex() or '(empty)'}; expected "
                "c301 (Avro single-object) or 00 (Confluent wire format)"
            )
        if type_name is not None and writer.type_name != type_name:
            raise DecodeError(f"expected a {type_name} record, got {writer.type_name}")
        reader = self.store.latest(writer.type_name)
        buf = io.BytesIO(data)
        buf.seek(offset)
        try:
            record = fastavro.schemaless_reader(
                buf,
                writer_parsed,
                reader.parsed if reader is not writer else None,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:  # truncated or corrupt bodies raise EOFError, ValueError, ...
            raise DecodeError(
                f"cannot read {writer.full_name} v{writer.version} body "
                f"({len(data) - offset} bytes): {type(exc).__name__}: {exc}"
            ) from exc
        trailing = len(data) - buf.tell()
        if trailing:
            raise DecodeError(
                f"{trailing} unexpected bytes after a {writer.full_name} v{writer.version} record"
            )
        if not isinstance(record, dict):
            raise DecodeError(f"{writer.full_name} body is not a record")
        return Decoded(writer.type_name, writer.version, record)

    def _registry_writer(self, schema_id: int) -> tuple[SchemaVersion, Any]:
        cached = self._registry_writers.get(schema_id)
        if cached is not None:
            return cached
        if self.registry is None:
            raise DecodeError(
                f"Confluent-framed record (schema id {schema_id}) but no schema registry "
                "is configured"
            )
        try:
            schema = json.loads(self.registry.get_schema(schema_id).schema_str or "null")
            if not isinstance(schema, dict):
                raise DecodeError("not a named Avro record schema")
            parsed = fastavro.parse_schema(schema)
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} not readable from registry: {exc}") from exc
        full_name = f"{schema.get('namespace', '')}.{schema.get('name', '')}".lstrip(".")
        type_name = self.store.by_full_name(full_name)
        if type_name is None:
            raise DecodeError(f"schema id {schema_id} is {full_name}, not an Undertow record")
        fp = crc64_fingerprint(schema)
        shipped = self.store.by_fingerprint(fp)
        writer = shipped or SchemaVersion(
            type_name, 0, full_name, schema, parsed, fp, Path(f"registry:{schema_id}")
        )
        self._registry_writers[schema_id] = (writer, parsed)
        return writer, parsed


def _explain_invalid(version: SchemaVersion, record: Mapping[str, Any], exc: Exception) -> str:
    """A message naming the fields that do not fit, from fastavro's validator when it can."""
    prefix = f"record does not match {version.full_name} v{version.version}"
    if not isinstance(record, Mapping):
        return f"{prefix}: expected a dict, got {type(record).__name__}"
    try:
        validate(record, version.parsed, raise_errors=True, strict=False)
    except ValidationError as err:
        return f"{prefix}: {'; '.join(str(e) for e in err.errors)}"
    except Exception:
        pass
    return f"{prefix}: {type(exc).__name__}: {exc}"
