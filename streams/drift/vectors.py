"""Arrays of vectors as JSON values: little-endian base64 with the shape and the float type.

Baselines (centroids, topics, a reference sample) and monitor state (the recent window) hold
many 384-float vectors; base64 keeps them a third of the size of JSON numbers, and exact.
``float16`` halves that again at about 0.1% error in a cosine; the monitor rounds its window
to float16 *when an event arrives*, so a saved and restored window is bit-identical to the
one that kept running.

>>> v = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> np.array_equal(decode(encode(v)), v)
True
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import DriftError

_TYPES: dict[str, str] = {"f2": "<f2", "f4": "<f4", "f8": "<f8"}


def encode(array: npt.ArrayLike, dtype: Literal["f2", "f4", "f8"] = "f4") -> dict[str, Any]:
    """``{"dtype", "shape", "b64"}`` for a 1-d or 2-d array, stored as ``dtype``."""
    data = np.ascontiguousarray(np.asarray(array), dtype=_TYPES[dtype])
    return {
        "dtype": dtype,
        "shape": list(data.shape),
        "b64": base64.b64encode(data.tobytes()).decode("ascii"),
    }


def decode(
    value: Mapping[str, Any], dtype: type[np.floating[Any]] = np.float32
) -> npt.NDArray[Any]:
    """The array ``encode`` described, as ``dtype`` (a fresh, writable array)."""
    try:
        stored = _TYPES[str(value["dtype"])]
        shape = tuple(int(n) for n in value["shape"])
        raw = base64.b64decode(str(value["b64"]), validate=True)
        array = np.frombuffer(raw, dtype=stored).reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise DriftError(
            f"expected an encoded array with dtype, shape and b64, got {value!r:.200}"
        ) from exc
    return array.astype(dtype)


__all__ = ["decode", "encode"]
