"""Sample records built from a schema itself, so every field of every type is exercised."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any


def sample_records(schema: Any, named: dict[str, Any] | None = None) -> list[Any]:
    """One value per alternative: a record whose body is a union of records yields one each.

    Every optional field takes its non-null branch, so a field that is dropped on the way
    shows up as a difference.
    """
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in named:
            return sample_records(named[schema], named)
        return [_primitive(schema, None)]
    if isinstance(schema, list):
        branches = [s for s in schema if s != "null"]
        values: list[Any] = []
        record_union = sum(1 for b in branches if _is_record(b, named)) > 1
        for branch in branches:
            for value in sample_records(branch, named):
                values.append((_full_name(branch, named), value) if record_union else value)
        return values
    kind = schema["type"]
    if kind == "record":
        named[_qualified(schema)] = schema
        named[schema["name"]] = schema
        variants: list[dict[str, Any]] = [{}]
        for field in schema["fields"]:
            options = sample_records(field["type"], named)
            if len(options) > 1 and len(variants) == 1:
                variants = [dict(variants[0]) for _ in options]
                for variant, option in zip(variants, options, strict=True):
                    variant[field["name"]] = option
            else:
                for variant in variants:
                    variant[field["name"]] = options[0]
        return list(variants)
    if kind == "enum":
        named[_qualified(schema)] = schema
        return [schema["symbols"][-1]]
    if kind == "array":
        return [sample_records(schema["items"], named)[:2] * 2]
    if kind == "map":
        return [{"k1": sample_records(schema["values"], named)[0]}]
    return [_primitive(kind, schema.get("logicalType"))]


def _primitive(kind: str, logical: str | None) -> Any:
    if logical == "uuid":
        return uuid.UUID("12345678-1234-5678-1234-567812345678")
    if logical == "timestamp-micros":
        return datetime(2026, 11, 24, 12, 30, 1, 123456, tzinfo=UTC)
    return {
        "string": "text with ünïcode",
        "int": 42,
        "long": 2**40,
        "float": 1.5,
        "double": 0.125,
        "boolean": True,
        "bytes": b"\x00\xffraw",
    }[kind]


def _is_record(schema: Any, named: dict[str, Any]) -> bool:
    if isinstance(schema, str):
        return isinstance(named.get(schema), dict) and named[schema].get("type") == "record"
    return isinstance(schema, dict) and schema.get("type") == "record"


def _qualified(schema: dict[str, Any]) -> str:
    name: str = schema["name"]
    return name if "." in name or "namespace" not in schema else f"{schema['namespace']}.{name}"


def _full_name(schema: Any, named: dict[str, Any]) -> str:
    if isinstance(schema, str):
        return schema if "." in schema else f"undertow.{schema}"
    return _qualified(schema) if "namespace" in schema else f"undertow.{schema['name']}"
