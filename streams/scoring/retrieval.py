"""Retrieval quality and a first groundedness signal, from embeddings the caller computed.

A RAG answer goes wrong in two places: the store returns nothing or nothing relevant, or the
model answers away from what it was given. Both show up as cosine similarities between
embeddings of one model: the query against each retrieved document (retrieval quality) and
the completion against the retrieved context (groundedness). With vectors of unit length the
cosine is the dot product, so everything here is a few matrix products.

These are signals to watch for drift and to alert on, not verdicts: a high similarity says the
texts are about the same thing, not that the answer is supported by them. Similarities from
different embedding models are not comparable; store the embedding model beside them.

Inputs are numpy arrays of L2-normalised rows (what ``Embedder.embed`` returns). The batch
functions take one query or completion per event and a ragged list of document matrices, and
compute the whole micro-batch in one pass.

>>> import numpy as np
>>> q = np.array([1.0, 0.0])
>>> docs = np.array([[1.0, 0.0], [0.0, 1.0]])
>>> quality = retrieval_quality(q, docs)
>>> quality.max_similarity, quality.mean_similarity
(1.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from undertow.errors import UndertowError

FloatArray = npt.NDArray[np.float64]
# How far from 1 a row's norm may be before it is refused as not normalised: float32
# embeddings are normalised to ~1e-7, so this only catches vectors that never were.
NORM_TOLERANCE = 1e-3
# A context centroid shorter than this (documents pointing in opposite directions) has no
# direction worth comparing with.
MIN_CENTROID_NORM = 1e-9


class RetrievalError(UndertowError):
    """Embeddings of the wrong shape, with NaNs, or not L2-normalised."""


@dataclass(frozen=True)
class RetrievalQuality:
    """How well one retrieval's documents match its query.

    ``max_similarity`` is the best document's cosine with the query, ``mean_similarity`` the
    average over the documents given; both are None when nothing was retrieved (``empty``).
    ``latency_ms`` is the store's own figure, passed through so one record carries it all.
    """

    documents: int
    empty: bool
    max_similarity: float | None
    mean_similarity: float | None
    latency_ms: float | None = None

    def scores(self) -> dict[str, float]:
        """Entries for a ScoredEvent's ``scores`` map (numbers only; absent, never null)."""
        out = {"retrieval_documents": float(self.documents), "retrieval_empty": float(self.empty)}
        if self.max_similarity is not None and self.mean_similarity is not None:
            out["retrieval_similarity_max"] = self.max_similarity
            out["retrieval_similarity_mean"] = self.mean_similarity
        return out


@dataclass(frozen=True)
class Groundedness:
    """How close a completion stays to the context it was given.

    ``max_similarity``: cosine of the completion with its closest document, high when the
    answer follows one source. ``centroid_similarity``: cosine with the mean of the document
    vectors, high when it follows the context as a whole. None when there was no context (or,
    for the centroid, when the documents cancel out).
    """

    max_similarity: float | None
    centroid_similarity: float | None

    def scores(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.max_similarity is not None:
            out["groundedness_max"] = self.max_similarity
        if self.centroid_similarity is not None:
            out["groundedness_centroid"] = self.centroid_similarity
        return out


def retrieval_quality(
    query: npt.ArrayLike, documents: npt.ArrayLike, latency_ms: float | None = None
) -> RetrievalQuality:
    """Quality of one retrieval: ``query`` of shape ``(d,)``, ``documents`` of ``(n, d)``."""
    q = _rows(query, "query", single=True)
    return retrieval_quality_batch(q, [documents], [latency_ms])[0]


def retrieval_quality_batch(
    queries: npt.ArrayLike,
    documents: Sequence[npt.ArrayLike],
    latencies_ms: Sequence[float | None] | None = None,
) -> list[RetrievalQuality]:
    """Quality of many retrievals at once: ``queries`` ``(b, d)``, ``documents[i]`` ``(n_i, d)``."""
    q = _rows(queries, "queries")
    if latencies_ms is not None and len(latencies_ms) != q.shape[0]:
        raise RetrievalError(f"expected {q.shape[0]} latencies, got {len(latencies_ms)}")
    seg = _Segments.of(q, documents, "documents")
    maxes = seg.max_similarity()
    sums = seg.sum_similarity()
    out = []
    for i, n in enumerate(seg.counts):
        latency = None if latencies_ms is None else latencies_ms[i]
        if n == 0:
            out.append(RetrievalQuality(0, True, None, None, latency))
        else:
            mean = _clip(sums[i] / n)
            out.append(RetrievalQuality(int(n), False, _clip(maxes[i]), mean, latency))
    return out


def groundedness(completion: npt.ArrayLike, context: npt.ArrayLike) -> Groundedness:
    """Groundedness of one completion ``(d,)`` in its retrieved context ``(n, d)``."""
    c = _rows(completion, "completion", single=True)
    return groundedness_batch(c, [context])[0]


def groundedness_batch(
    completions: npt.ArrayLike, contexts: Sequence[npt.ArrayLike]
) -> list[Groundedness]:
    """Groundedness of many completions ``(b, d)``, each in its context ``contexts[i]``.

    The centroid similarity uses ``c . mean(D) / |mean(D)|``, which equals the summed document
    similarities over the length of the summed document vectors, so it costs one extra norm.
    """
    c = _rows(completions, "completions")
    seg = _Segments.of(c, contexts, "contexts")
    maxes = seg.max_similarity()
    sums = seg.sum_similarity()
    norms = seg.sum_vector_norm()
    out = []
    for i, n in enumerate(seg.counts):
        if n == 0:
            out.append(Groundedness(None, None))
            continue
        centroid = None if norms[i] < MIN_CENTROID_NORM else _clip(sums[i] / norms[i])
        out.append(Groundedness(_clip(maxes[i]), centroid))
    return out


@dataclass(frozen=True)
class _Segments:
    """One vector per event and its ragged documents, flattened for segment-wise reductions."""

    vectors: FloatArray  # (b, d)
    docs: FloatArray  # (N, d), all events' documents in order
    counts: npt.NDArray[np.int64]  # (b,), documents per event
    sims: FloatArray  # (N,), each document's dot product with its own event's vector

    @classmethod
    def of(cls, vectors: FloatArray, groups: Sequence[npt.ArrayLike], what: str) -> _Segments:
        b, d = vectors.shape
        if len(groups) != b:
            raise RetrievalError(f"expected {b} {what} matrices, one per row, got {len(groups)}")
        mats = [_rows(g, f"{what}[{i}]", dim=d, allow_empty=True) for i, g in enumerate(groups)]
        counts = np.array([m.shape[0] for m in mats], dtype=np.int64)
        docs = np.concatenate(mats, axis=0) if mats else np.empty((0, d))
        owner = np.repeat(np.arange(b), counts)
        sims = np.einsum("nd,nd->n", docs, vectors[owner])
        return cls(vectors, docs, counts, sims)

    def _starts(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
        # reduceat over the non-empty segments only: an empty segment would read as its
        # neighbour's first element. Skipping them keeps each segment's end right.
        starts = np.concatenate(([0], np.cumsum(self.counts)[:-1])).astype(np.int64)
        nonempty = np.flatnonzero(self.counts > 0)
        return starts[nonempty], nonempty

    def max_similarity(self) -> FloatArray:
        out = np.full(self.counts.shape[0], np.nan)
        starts, idx = self._starts()
        if idx.size:
            out[idx] = np.maximum.reduceat(self.sims, starts)
        return out

    def sum_similarity(self) -> FloatArray:
        out = np.zeros(self.counts.shape[0])
        starts, idx = self._starts()
        if idx.size:
            out[idx] = np.add.reduceat(self.sims, starts)
        return out

    def sum_vector_norm(self) -> FloatArray:
        out = np.zeros(self.counts.shape[0])
        starts, idx = self._starts()
        if idx.size:
            out[idx] = np.linalg.norm(np.add.reduceat(self.docs, starts, axis=0), axis=1)
        return out


def _rows(
    x: npt.ArrayLike,
    what: str,
    *,
    single: bool = False,
    dim: int | None = None,
    allow_empty: bool = False,
) -> FloatArray:
    """``x`` as a float64 matrix of unit rows, or RetrievalError saying what was wrong."""
    a = np.asarray(x, dtype=np.float64)
    if single:
        if a.ndim != 1:
            raise RetrievalError(f"{what}: expected one vector of shape (d,), got {a.shape}")
        a = a[None, :]
    if allow_empty and a.size == 0:
        return np.empty((0, dim if dim is not None else (a.shape[-1] if a.ndim == 2 else 0)))
    if a.ndim != 2 or a.shape[1] == 0:
        raise RetrievalError(f"{what}: expected a matrix of shape (n, d), got {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise RetrievalError(f"{what}: expected vectors of dimension {dim}, got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise RetrievalError(f"{what}: contains NaN or infinite values")
    norms = np.linalg.norm(a, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise RetrievalError(
            f"{what}: expected L2-normalised rows, row {int(bad[0])} has norm {norms[bad[0]]:.6g}"
        )
    return a


def _clip(x: float) -> float:
    # rounding can put a cosine a hair outside [-1, 1]
    return min(1.0, max(-1.0, float(x)))
