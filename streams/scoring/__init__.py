"""Scorers behind one small interface (score(texts) -> floats), chosen by name from a registry.

Importing the package registers the built-in implementations; each loads its model lazily, on
construction, so importing stays cheap.
"""

from undertow.streams.scoring import embedding, injection, toxicity
from undertow.streams.scoring.base import (
    Embedder,
    Scorer,
    ScoringError,
    available,
    available_embedders,
    create,
    create_embedder,
    register,
    register_embedder,
)

__all__ = [
    "Embedder",
    "Scorer",
    "ScoringError",
    "available",
    "available_embedders",
    "create",
    "create_embedder",
    "embedding",
    "injection",
    "register",
    "register_embedder",
    "toxicity",
]
