"""Retrieval quality and groundedness from unit-length embeddings."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from undertow.streams.scoring.retrieval import (
    Groundedness,
    RetrievalError,
    RetrievalQuality,
    groundedness,
    groundedness_batch,
    retrieval_quality,
    retrieval_quality_batch,
)

E1 = np.array([1.0, 0.0, 0.0])
E2 = np.array([0.0, 1.0, 0.0])
E3 = np.array([0.0, 0.0, 1.0])
DIAG = np.array([1.0, 1.0, 0.0]) / math.sqrt(2)


def unit_rows(rng: np.random.Generator, n: int, d: int) -> npt.NDArray[np.float64]:
    x = rng.normal(size=(n, d))
    out: npt.NDArray[np.float64] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_retrieval_quality_exact() -> None:
    q = retrieval_quality(E1, np.stack([E1, E2, DIAG]), latency_ms=12.5)
    assert q == RetrievalQuality(
        documents=3,
        empty=False,
        max_similarity=1.0,
        mean_similarity=pytest.approx((1.0 + 0.0 + 1 / math.sqrt(2)) / 3),
        latency_ms=12.5,
    )
    assert q.scores() == {
        "retrieval_documents": 3.0,
        "retrieval_empty": 0.0,
        "retrieval_similarity_max": 1.0,
        "retrieval_similarity_mean": pytest.approx(0.5690355937),
    }


def test_empty_retrieval_is_flagged_not_scored() -> None:
    q = retrieval_quality(E1, np.empty((0, 3)), latency_ms=3.0)
    assert q == RetrievalQuality(0, True, None, None, 3.0)
    assert q.scores() == {"retrieval_documents": 0.0, "retrieval_empty": 1.0}
    # an empty list works too: there is no shape to read from it
    assert retrieval_quality(E1, []).empty


def test_opposite_document_gives_minus_one() -> None:
    q = retrieval_quality(E1, np.stack([-E1]))
    assert (q.max_similarity, q.mean_similarity) == (-1.0, -1.0)


def test_batch_with_ragged_and_empty_segments_matches_single_calls() -> None:
    rng = np.random.default_rng(7)
    d = 16
    counts = [3, 0, 1, 0, 5, 2]
    queries = unit_rows(rng, len(counts), d)
    docs = [unit_rows(rng, n, d) for n in counts]
    lat = [1.0, None, 3.0, 4.0, 5.0, 6.0]
    batch = retrieval_quality_batch(queries, docs, lat)
    for i, got in enumerate(batch):
        sims = docs[i] @ queries[i]
        assert got.documents == counts[i] and got.latency_ms == lat[i]
        if counts[i] == 0:
            assert got.empty and got.max_similarity is None
        else:
            assert got.max_similarity == pytest.approx(sims.max())
            assert got.mean_similarity == pytest.approx(sims.mean())
            assert got == retrieval_quality(queries[i], docs[i], lat[i])


def test_float32_embeddings_are_accepted() -> None:
    rng = np.random.default_rng(1)
    q = unit_rows(rng, 1, 384).astype(np.float32)[0]
    docs = unit_rows(rng, 4, 384).astype(np.float32)
    got = retrieval_quality(q, docs)
    assert got.max_similarity == pytest.approx(float((docs @ q).max()), abs=1e-6)


def test_groundedness_exact() -> None:
    g = groundedness(E1, np.stack([E1, E2]))
    # the mean context vector points along the diagonal
    assert g == Groundedness(
        max_similarity=1.0, centroid_similarity=pytest.approx(1 / math.sqrt(2))
    )
    assert g.scores() == {
        "groundedness_max": 1.0,
        "groundedness_centroid": pytest.approx(0.7071067812),
    }
    off = groundedness(E3, np.stack([E1, E2]))
    assert (off.max_similarity, off.centroid_similarity) == (0.0, 0.0)


def test_groundedness_without_context_or_with_cancelling_context() -> None:
    assert groundedness(E1, np.empty((0, 3))) == Groundedness(None, None)
    assert Groundedness(None, None).scores() == {}
    g = groundedness(E1, np.stack([E2, -E2]))
    assert g.max_similarity == 0.0 and g.centroid_similarity is None


def test_groundedness_batch_matches_definition() -> None:
    rng = np.random.default_rng(11)
    d = 8
    counts = [2, 0, 4]
    comps = unit_rows(rng, 3, d)
    ctx = [unit_rows(rng, n, d) for n in counts]
    got = groundedness_batch(comps, ctx)
    for i, g in enumerate(got):
        if counts[i] == 0:
            assert g == Groundedness(None, None)
            continue
        mean = ctx[i].mean(axis=0)
        assert g.max_similarity == pytest.approx((ctx[i] @ comps[i]).max())
        assert g.centroid_similarity == pytest.approx(comps[i] @ mean / np.linalg.norm(mean))


@pytest.mark.parametrize(
    ("query", "docs", "message"),
    [
        (np.array([[1.0, 0.0]]), np.eye(2), "one vector"),
        (np.array([2.0, 0.0]), np.eye(2), "L2-normalised"),
        (np.array([0.0, 0.0]), np.eye(2), "norm 0"),
        (np.array([np.nan, 1.0]), np.eye(2), "NaN"),
        (np.array([1.0, 0.0]), np.eye(3), "dimension 2"),
        (np.array([1.0, 0.0]), np.array([1.0, 0.0]), r"shape \(n, d\)"),
        (np.array([1.0, 0.0]), np.array([[1.0, 0.0], [3.0, 4.0]]), "row 1 has norm 5"),
    ],
)
def test_bad_embeddings_are_refused(
    query: npt.NDArray[np.float64], docs: npt.NDArray[np.float64], message: str
) -> None:
    with pytest.raises(RetrievalError, match=message):
        retrieval_quality(query, docs)


def test_batch_length_mismatches_are_refused() -> None:
    with pytest.raises(RetrievalError, match="expected 2 documents matrices"):
        retrieval_quality_batch(np.stack([E1, E2]), [np.stack([E1])])
    with pytest.raises(RetrievalError, match="latencies"):
        retrieval_quality_batch(np.stack([E1]), [np.stack([E1])], [1.0, 2.0])
