"""The sentence-transformers embedder: offline default, shared model, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from undertow.streams.scoring.base import ScoringError, create_embedder
from undertow.streams.scoring.embedding import SentenceTransformerEmbedder, bundled_model_path


def test_the_default_is_the_bundled_minilm() -> None:
    embedder = create_embedder("minilm")
    assert embedder.dim == 384
    assert embedder.version == "sentence-transformers/all-MiniLM-L6-v2:384d"


def test_similar_texts_are_closer_than_unrelated_ones() -> None:
    a, b, c = create_embedder("minilm").embed(
        ["How do I reset my password?", "I forgot my password, how can I change it?", "Paris"]
    )
    assert float(a @ b) > float(a @ c) + 0.3


def test_the_model_is_loaded_once_per_process() -> None:
    first = create_embedder("minilm")
    second = create_embedder("minilm", model_name_or_path=bundled_model_path(), batch_size=8)
    assert isinstance(first, SentenceTransformerEmbedder)
    assert isinstance(second, SentenceTransformerEmbedder)
    assert first._model is second._model
    np.testing.assert_allclose(first.embed(["x y z"]), second.embed(["x y z"]), atol=1e-6)


def test_a_missing_model_is_a_scoring_error(tmp_path: Path) -> None:
    with pytest.raises(ScoringError, match="could not load"):
        create_embedder("minilm", model_name_or_path=tmp_path / "absent", local_files_only=True)


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ScoringError, match="batch_size"):
        create_embedder("minilm", batch_size=0)
