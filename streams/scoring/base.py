"""The scorer interface: ``score(texts) -> floats``, one implementation per module, by name.

Scorers are plain classes that know nothing of Faust or Kafka; a processor batches texts and
calls ``score`` once per micro-batch. Each implementation registers a factory under a name, so
configuration picks it (``create("toxicity.profanity")``) and one contract test runs every
registered scorer through the same checks. Embedders share the registry idea with their own
interface, since they return vectors.

>>> @register("example.length")
... class Length(Scorer):
...     version = "1"
...     def score(self, texts):
...         return [min(1.0, len(t) / 100) for t in texts]
>>> create("example.length").score(["abc"])
[0.03]
>>> unregister("example.length")
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from undertow.errors import UndertowError


class ScoringError(UndertowError):
    """A scorer could not be built (missing weights, bad options) or failed on a batch."""


class Scorer(ABC):
    """Maps texts to scores in [0, 1], where higher means more of the property scored.

    ``version`` names the model and its weights, so stored scores say what produced them.
    """

    name: str = ""
    version: str = ""

    @abstractmethod
    def score(self, texts: Sequence[str]) -> list[float]:
        """One score in [0, 1] per text, in order. An empty batch gives an empty list."""


class Embedder(ABC):
    """Maps texts to unit-length vectors of ``dim`` floats."""

    name: str = ""
    version: str = ""
    dim: int = 0

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """An array of shape ``(len(texts), dim)``, each row L2-normalised."""


T = TypeVar("T", bound=Callable[..., Any])
_SCORERS: dict[str, Callable[..., Scorer]] = {}
_EMBEDDERS: dict[str, Callable[..., Embedder]] = {}


def register(name: str) -> Callable[[T], T]:
    """Register a scorer factory (usually the class) under ``name``."""

    def add(factory: T) -> T:
        if name in _SCORERS:
            raise ScoringError(f"a scorer named {name!r} is already registered")
        _SCORERS[name] = factory
        if isinstance(factory, type):
            cast(Any, factory).name = name
        return factory

    return add


def register_embedder(name: str) -> Callable[[T], T]:
    """Register an embedder factory under ``name``."""

    def add(factory: T) -> T:
        if name in _EMBEDDERS:
            raise ScoringError(f"an embedder named {name!r} is already registered")
        _EMBEDDERS[name] = factory
        if isinstance(factory, type):
            cast(Any, factory).name = name
        return factory

    return add


def unregister(name: str) -> None:
    _SCORERS.pop(name, None)
    _EMBEDDERS.pop(name, None)


def create(name: str, **options: Any) -> Scorer:
    """Build the scorer registered as ``name`` with its options."""
    try:
        factory = _SCORERS[name]
    except KeyError:
        raise ScoringError(f"no scorer named {name!r}; registered: {available()}") from None
    return factory(**options)


def create_embedder(name: str, **options: Any) -> Embedder:
    """Build the embedder registered as ``name`` with its options."""
    try:
        factory = _EMBEDDERS[name]
    except KeyError:
        raise ScoringError(
            f"no embedder named {name!r}; registered: {sorted(_EMBEDDERS)}"
        ) from None
    return factory(**options)


def scorer_factory(name: str) -> Callable[..., Scorer] | None:
    """The factory registered as scorer ``name`` (to inspect its options), or None."""
    return _SCORERS.get(name)


def embedder_factory(name: str) -> Callable[..., Embedder] | None:
    """The factory registered as embedder ``name``, or None."""
    return _EMBEDDERS.get(name)


def available() -> list[str]:
    """Registered scorer names."""
    return sorted(_SCORERS)


def available_embedders() -> list[str]:
    return sorted(_EMBEDDERS)
