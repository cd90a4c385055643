"""Prompt-injection scorers; ``injection.minilm_lr`` is the project's own classifier.

``injection.minilm_lr`` is logistic regression over MiniLM sentence embeddings, trained by
``train_injection.py`` on the S-Labs split and committed as a small JSON artifact (weights,
threshold, data hashes, versions and evaluation figures; no pickle, so loading runs no code).
Scoring is ``sigmoid(embedding . coef + intercept)``; ``threshold`` is the operating point
chosen on validation data, for rules that want a yes/no.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.scoring.base import Embedder, Scorer, ScoringError, register

ARTIFACT_FORMAT = "undertow.linear-probe/1"
DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "injection_minilm_lr.json"


def load_artifact(path: str | Path) -> tuple[dict[str, Any], str]:
    """The artifact as a dict, checked for the fields the scorer needs, and its sha256."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        artifact = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ScoringError(f"expected a JSON classifier artifact at {path}: {exc}") from exc
    if not isinstance(artifact, dict) or artifact.get("format") != ARTIFACT_FORMAT:
        found = artifact.get("format") if isinstance(artifact, dict) else type(artifact).__name__
        raise ScoringError(f"{path} is not a {ARTIFACT_FORMAT!r} artifact (format: {found!r})")
    try:
        coef = np.asarray(artifact["coef"], dtype=np.float64)
        float(artifact["intercept"]), float(artifact["threshold"])
        dim = int(artifact["embedding"]["dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ScoringError(f"{path} lacks coef, intercept, threshold or embedding.dim") from exc
    if coef.shape != (dim,) or not np.all(np.isfinite(coef)):
        raise ScoringError(f"{path}: expected {dim} finite weights, got shape {coef.shape}")
    return artifact, hashlib.sha256(raw).hexdigest()


@register("injection.minilm_lr")
class LinearProbeInjectionScorer(Scorer):
    """Probability that a text is a prompt injection: a linear probe over sentence embeddings.

    ``artifact``: the JSON file to load (default: the committed one).
    ``embedder``: an Embedder to reuse (e.g. the worker's own); by default one is built with
    ``create_embedder(artifact.embedding.embedder, **embedder_options)``. Its ``version`` must
    match the artifact's unless ``check_embedder=False`` (e.g. the same model from another
    path): a probe on other vectors scores noise.
    """

    def __init__(
        self,
        artifact: str | Path | None = None,
        embedder: Embedder | None = None,
        check_embedder: bool = True,
        **embedder_options: Any,
    ) -> None:
        data, digest = load_artifact(artifact or DEFAULT_ARTIFACT)
        spec = data["embedding"]
        if embedder is None:
            from undertow.streams.scoring.base import create_embedder

            embedder = create_embedder(spec.get("embedder", "minilm"), **embedder_options)
        if embedder.dim != int(spec["dim"]):
            raise ScoringError(
                f"the artifact expects {spec['dim']}-d embeddings, "
                f"the embedder gives {embedder.dim}-d"
            )
        if check_embedder and spec.get("version") and embedder.version != spec["version"]:
            raise ScoringError(
                f"the artifact was trained on {spec['version']!r} vectors, the embedder is "
                f"{embedder.version!r} (pass check_embedder=False if they are the same model)"
            )
        self._embedder = embedder
        self._coef = np.asarray(data["coef"], dtype=np.float64)
        self._intercept = float(data["intercept"])
        self.threshold = float(data["threshold"])
        self.artifact = data
        self.version = f"{self.name or 'injection.minilm_lr'}@{digest[:12]}+{embedder.version}"

    def score(self, texts: Sequence[str]) -> list[float]:
        if len(texts) == 0:
            return []
        return [float(p) for p in self.score_vectors(self._embedder.embed(texts))]

    def score_vectors(self, vectors: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Scores for embeddings already computed (a worker that embeds every text anyway)."""
        z = np.asarray(vectors, dtype=np.float64) @ self._coef + self._intercept
        return np.clip(0.5 * (1.0 + np.tanh(0.5 * z)), 0.0, 1.0)
