"""Segments: the slices of traffic that get their own baseline and detectors.

A segment is the values of a few fields of a scored event, by default the app, the model and
the prompt version, because a new model or prompt is expected to change the traffic and must
be judged against its own baseline. Its key reads like a path, as ``undertow.drift.v1``'s
``segment`` field says:

>>> fields = segment_of({"app": "chat", "model": "smollm2", "prompt_version": "v3"})
>>> segment_key(fields)
'app=chat/model=smollm2/prompt=v3'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_SEGMENT_FIELDS: tuple[str, ...] = ("app", "model", "prompt_version")
# Shorter names in keys, as the drift topic documents them.
KEY_NAMES: dict[str, str] = {"prompt_version": "prompt"}


def segment_of(
    event: Mapping[str, Any], fields: Sequence[str] = DEFAULT_SEGMENT_FIELDS
) -> dict[str, str]:
    """The segment fields of a scored event, in order; a missing or null field is ``""``."""
    out: dict[str, str] = {}
    for name in fields:
        value = event.get(name)
        out[name] = "" if value is None else str(value)
    return out


def segment_key(fields: Mapping[str, str]) -> str:
    """``name=value`` pairs joined by ``/``, in the fields' order (``/`` in values escaped)."""
    return "/".join(
        f"{KEY_NAMES.get(name, name)}={value.replace('%', '%25').replace('/', '%2F')}"
        for name, value in fields.items()
    )


__all__ = ["DEFAULT_SEGMENT_FIELDS", "KEY_NAMES", "segment_key", "segment_of"]
