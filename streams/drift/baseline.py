"""Baselines: what one segment's traffic looked like in a period judged normal.

A :class:`Baseline` holds, per segment (app, model, prompt version by default):

* per event type with embeddings (prompt, completion, retrieval query), an
  :class:`EmbeddingProfile`: the unit centroid and the distribution of cosine distances to it;
  a few k-means *topics* (unit centroids with their share of traffic, the texts nearest them
  and a label), so a detection can name the baseline topics a window came near or left; the
  distribution of each row's distance to its nearest topic, measured *out of fold* (topics fit
  on the other folds), which is what new traffic will show, finely enough (1,001 levels) to
  turn a distance into a tail probability (:meth:`EmbeddingProfile.surprise`); and a seeded
  reference sample of rows with those distances, for the two-sample confirmation;
* per scalar quantity (toxicity, injection, tokens, latency, cost), a :class:`ScalarProfile`:
  a quantile summary, the mean and spread after its transform (the monitor standardises with
  them) and a reference sample of values;
* per monitored stream, the detector setting chosen by calibration and how it was measured
  (:mod:`undertow.streams.drift.calibration`).

It is built from arrays (:func:`build_baseline`) or from scored-event rows
(:func:`build_baselines`, which groups them by segment), for example a ClickHouse time range
or a file; it is serialised to JSON with ``version``, a content hash (the drift events name
it), and ``created_at``.

>>> rng = np.random.default_rng(0)
>>> vectors = rng.normal(size=(300, 16)).astype(np.float32)
>>> b = build_baseline({"app": "chat"}, embeddings={"prompt": vectors},
...                    config=BaselineConfig(topics=4), calibration=None)
>>> Baseline.loads(b.dumps()).version == b.version
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import DriftError
from undertow.streams.drift.calibration import (
    DEFAULT_EVENTS,
    DEFAULT_TARGET_RATE,
    Calibration,
    calibrate,
)
from undertow.streams.drift.quantity import (
    DEFAULT_QUANTITIES,
    EMBEDDING_DETECTOR,
    EMBEDDING_EVENT_TYPES,
    EMBEDDING_STATISTICS,
    SCALAR_DETECTOR,
    DetectorSpec,
    EmbeddingStatistic,
    Quantity,
    embedding_stream,
)
from undertow.streams.drift.segment import DEFAULT_SEGMENT_FIELDS, segment_key, segment_of
from undertow.streams.drift.sketch import DEFAULT_LEVELS, Quantiles
from undertow.streams.drift.vectors import decode, encode

FORMAT = "undertow.drift.baseline"
FORMAT_VERSION = 1
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BaselineConfig:
    """How a baseline is summarised. ``topics``: k-means clusters per event type (fewer when
    rows are few: at least ``rows_per_topic`` rows each); ``folds``: for out-of-fold topic
    distances; ``reference_size``: rows (and scalar values) kept for two-sample tests;
    ``examples``: texts kept per topic; ``levels``: quantile levels of scalar quantities,
    ``distance_levels`` of embedding distances; ``min_rows``: fewer rows than this and the
    event type or quantity is left out."""

    topics: int = 32
    rows_per_topic: int = 10
    folds: int = 5
    reference_size: int = 512
    examples: int = 3
    levels: int = DEFAULT_LEVELS
    distance_levels: int = 1001
    min_rows: int = 20
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "topics": self.topics,
            "rows_per_topic": self.rows_per_topic,
            "folds": self.folds,
            "reference_size": self.reference_size,
            "examples": self.examples,
            "levels": self.levels,
            "distance_levels": self.distance_levels,
            "min_rows": self.min_rows,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class CalibrationConfig:
    """Which detectors to calibrate for the baseline's streams, and how hard to measure.

    ``statistics``: the embedding statistics to calibrate (the monitor feeds one of them to
    its detector). ``candidates``: per detector name, the values to try (defaults in
    :data:`undertow.streams.drift.calibration.DEFAULT_CANDIDATES`).
    """

    target_rate: float = DEFAULT_TARGET_RATE
    events: int = DEFAULT_EVENTS
    seed: int = 0
    embedding_detector: DetectorSpec = EMBEDDING_DETECTOR
    scalar_detector: DetectorSpec = SCALAR_DETECTOR
    statistics: tuple[EmbeddingStatistic, ...] = EMBEDDING_STATISTICS
    candidates: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Topic:
    """One k-means cluster of the baseline's embeddings: unit ``centroid``, ``share`` of the
    rows nearest it, ``examples`` (texts nearest the centroid, when texts were given)."""

    index: int
    label: str
    share: float
    centroid: npt.NDArray[np.float32]
    examples: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "share": self.share,
            "centroid": encode(self.centroid),
            "examples": list(self.examples),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topic:
        return cls(
            index=int(data["index"]),
            label=str(data["label"]),
            share=float(data["share"]),
            centroid=decode(data["centroid"]),
            examples=tuple(str(t) for t in data.get("examples", ())),
        )


@dataclass(frozen=True)
class EmbeddingProfile:
    """The embeddings of one event type in the baseline (see the module doc)."""

    event_type: str
    count: int
    centroid: npt.NDArray[np.float32]
    centroid_distance: Quantiles
    topics: tuple[Topic, ...]
    topic_distance: Quantiles
    reference: Matrix
    reference_topic_distance: npt.NDArray[np.float64]

    @property
    def dim(self) -> int:
        return int(self.centroid.shape[0])

    @cached_property
    def topic_matrix(self) -> Matrix:
        """The topic centroids as rows."""
        return np.stack([t.centroid for t in self.topics]).astype(np.float32)

    def surprise(self, topic_distances: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``-ln(1 - F(d))`` for distances ``d`` to the nearest topic, ``F`` the baseline's
        (out-of-fold) distribution; F is capped at ``1 - 1/(count + 1)``, so the largest value
        is ``ln(count + 1)``. About exponential with mean 1 on traffic like the baseline."""
        q = self.topic_distance
        d = np.asarray(topic_distances, dtype=np.float64)
        levels, values = np.asarray(q.levels), np.asarray(q.values)
        # the highest level whose value is <= d (flat stretches of equal values count fully)
        right = np.searchsorted(values, d, side="right")
        inner = np.clip(right, 1, len(values) - 1)
        lo, hi = values[inner - 1], values[inner]
        span = np.where(hi > lo, hi - lo, 1.0)
        t = np.where(hi > lo, (d - lo) / span, 1.0)
        cdf = levels[inner - 1] + np.clip(t, 0.0, 1.0) * (levels[inner] - levels[inner - 1])
        cdf = np.where(right == 0, 0.0, np.where(right >= len(values), 1.0, cdf))
        cap = 1.0 - 1.0 / (q.count + 1.0)
        return -np.log1p(-np.minimum(cdf, cap))

    def distances(
        self, vectors: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """For unit row vectors: cosine distance to the centroid, to the nearest topic, and
        that topic's index.

        Computed with ``einsum`` rather than a BLAS product: each row's result is then the
        same bits whatever the batch it came in (a BLAS kernel sums in an order that depends
        on the matrix shapes), so a monitor decides alike however its micro-batches fall; and
        it stays quick on a busy machine, where a threaded BLAS is slow on small products."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DriftError(
                f"expected vectors of {self.dim} dimensions for {self.event_type}, "
                f"got shape {x.shape}"
            )
        centroid = 1.0 - np.einsum("ij,j->i", x, self.centroid).astype(np.float64)
        sims = np.einsum("ij,kj->ik", x, self.topic_matrix)
        nearest = np.argmax(sims, axis=1)
        topic = 1.0 - sims[np.arange(len(x)), nearest].astype(np.float64)
        return centroid, topic, nearest.astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "count": self.count,
            "centroid": encode(self.centroid),
            "centroid_distance": self.centroid_distance.to_dict(),
            "topics": [t.to_dict() for t in self.topics],
            "topic_distance": self.topic_distance.to_dict(),
            "reference": encode(self.reference, "f2"),
            "reference_topic_distance": encode(self.reference_topic_distance, "f8"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingProfile:
        return cls(
            event_type=str(data["event_type"]),
            count=int(data["count"]),
            centroid=decode(data["centroid"]),
            centroid_distance=Quantiles.from_dict(data["centroid_distance"]),
            topics=tuple(Topic.from_dict(t) for t in data["topics"]),
            topic_distance=Quantiles.from_dict(data["topic_distance"]),
            reference=decode(data["reference"]),
            reference_topic_distance=decode(data["reference_topic_distance"], np.float64),
        )


@dataclass(frozen=True)
class ScalarProfile:
    """One scalar quantity in the baseline: quantiles of the raw values, ``center`` and
    ``scale`` of the transformed ones (for standardising) and a reference sample (raw)."""

    quantity: Quantity
    summary: Quantiles
    center: float
    scale: float
    reference: npt.NDArray[np.float64]

    def standardise(self, raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Transformed, centred and scaled values: mean 0 and spread 1 in the baseline."""
        return (self.quantity.transformed(raw) - self.center) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity.to_dict(),
            "summary": self.summary.to_dict(),
            "center": self.center,
            "scale": self.scale,
            "reference": encode(self.reference, "f8"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScalarProfile:
        return cls(
            quantity=Quantity.from_dict(data["quantity"]),
            summary=Quantiles.from_dict(data["summary"]),
            center=float(data["center"]),
            scale=float(data["scale"]),
            reference=decode(data["reference"], np.float64),
        )


@dataclass(frozen=True)
class Baseline:
    """One segment's baseline (see the module doc). Build with :func:`build_baseline`."""

    segment: Mapping[str, str]
    embeddings: Mapping[str, EmbeddingProfile]
    scalars: Mapping[str, ScalarProfile]
    calibration: Mapping[str, Calibration]
    config: Mapping[str, Any]
    created_at: str
    embedding_model: str | None = None
    source: Mapping[str, str] = field(default_factory=dict)
    version: str = ""

    @property
    def segment_key(self) -> str:
        return segment_key(self.segment)

    def content(self) -> dict[str, Any]:
        """Everything the version hashes: all but ``version`` and ``created_at``."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "segment": dict(self.segment),
            "segment_key": self.segment_key,
            "embedding_model": self.embedding_model,
            "source": dict(self.source),
            "config": dict(self.config),
            "embeddings": {k: p.to_dict() for k, p in sorted(self.embeddings.items())},
            "scalars": {k: p.to_dict() for k, p in sorted(self.scalars.items())},
            "calibration": {k: c.to_dict() for k, c in sorted(self.calibration.items())},
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.content(), "version": self.version, "created_at": self.created_at}

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` (via a temporary file, so readers never see half)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(self.dumps(), encoding="utf-8")
        tmp.replace(target)
        return target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise DriftError(
                f"expected a {FORMAT} v{FORMAT_VERSION} document, got format "
                f"{data.get('format')!r} v{data.get('format_version')!r}"
            )
        try:
            out = cls(
                segment={str(k): str(v) for k, v in data["segment"].items()},
                embeddings={
                    str(k): EmbeddingProfile.from_dict(v) for k, v in data["embeddings"].items()
                },
                scalars={str(k): ScalarProfile.from_dict(v) for k, v in data["scalars"].items()},
                calibration={
                    str(k): Calibration.from_dict(v) for k, v in data["calibration"].items()
                },
                config=dict(data["config"]),
                created_at=str(data["created_at"]),
                embedding_model=data.get("embedding_model"),
                source={str(k): str(v) for k, v in data.get("source", {}).items()},
                version=str(data["version"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DriftError(f"could not read a baseline: {exc!r}") from exc
        if out.version != content_version(out):
            raise DriftError(
                f"baseline {out.segment_key!r} says version {out.version!r} but its content "
                f"hashes to {content_version(out)!r}: edited or damaged"
            )
        return out

    @classmethod
    def loads(cls, text: str) -> Baseline:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DriftError(f"a baseline must be JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        return cls.loads(Path(path).read_text(encoding="utf-8"))

    def with_calibration(self, calibrations: Iterable[Calibration]) -> Baseline:
        """This baseline with these calibrations added (replacing any of the same stream)."""
        merged = {**self.calibration, **{c.stream: c for c in calibrations}}
        out = replace(self, calibration=merged)
        return replace(out, version=content_version(out))


def content_version(baseline: Baseline) -> str:
    """The first 16 hex digits of the SHA-256 of the canonical JSON of the content."""
    canonical = json.dumps(baseline.content(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _unit_rows(x: npt.ArrayLike, name: str) -> Matrix:
    m = np.asarray(x, dtype=np.float32)
    if m.ndim != 2:
        raise DriftError(f"expected {name} embeddings as a 2-d array, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise DriftError(f"{name} embeddings contain NaN or infinite values")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise DriftError(f"{name} embeddings contain all-zero vectors")
    out: Matrix = (m / norms).astype(np.float32)
    return out


def _fit_topics(x: Matrix, k: int, seed: int) -> Matrix:
    """Spherical k-means centroids (k-means on unit vectors, centroids renormalised).

    On one thread: the centroids (so the baseline's version) would otherwise depend on the
    machine's core count through the order of floating-point sums, and on a busy machine
    OpenMP threads made it 60 times slower."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
    c = km.cluster_centers_.astype(np.float32)
    out: Matrix = (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )
    return out


def _nearest(x: Matrix, centroids: Matrix) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any]]:
    sims = x @ centroids.T
    idx = np.argmax(sims, axis=1)
    return 1.0 - sims[np.arange(len(x)), idx].astype(np.float64), idx


def _out_of_fold_distances(x: Matrix, k: int, folds: int, seed: int) -> npt.NDArray[np.float64]:
    """Each row's distance to the nearest topic of k-means fit on the other folds."""
    n = len(x)
    folds = max(2, min(folds, n // max(k, 1)))
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty(n, dtype=np.float64)
    for f in range(folds):
        held = fold == f
        train = x[~held]
        kf = max(1, min(k, len(train)))
        out[held] = _nearest(x[held], _fit_topics(train, kf, seed + 1 + f))[0]
    return out


def _label(index: int, examples: Sequence[str]) -> str:
    if not examples:
        return f"t{index:02d}"
    text = " ".join(examples[0].split())
    return f"t{index:02d} {text[:57] + '...' if len(text) > 60 else text}"


def build_embedding_profile(
    event_type: str,
    vectors: npt.ArrayLike,
    texts: Sequence[str] | None = None,
    config: BaselineConfig = BaselineConfig(),
) -> tuple[EmbeddingProfile, npt.NDArray[np.float64]]:
    """The profile of one event type's embeddings, and every row's out-of-fold topic distance
    (what calibration replays)."""
    x = _unit_rows(vectors, event_type)
    n = len(x)
    if texts is not None and len(texts) != n:
        raise DriftError(f"{event_type}: {n} embeddings but {len(texts)} texts")
    centroid = x.mean(axis=0)
    centroid = (centroid / max(float(np.linalg.norm(centroid)), 1e-12)).astype(np.float32)
    k = max(1, min(config.topics, n // max(config.rows_per_topic, 1)))
    topics = _fit_topics(x, k, config.seed)
    _, assigned = _nearest(x, topics)
    shares = np.bincount(assigned, minlength=k) / n
    order = np.argsort(-shares, kind="stable")
    built: list[Topic] = []
    for rank, t in enumerate(order):
        examples: list[str] = []
        if texts is not None:
            for row in np.argsort(-(x @ topics[t]), kind="stable"):
                text = texts[int(row)]
                if text not in examples:
                    examples.append(text)
                if len(examples) >= config.examples:
                    break
        built.append(
            Topic(rank, _label(rank, examples), float(shares[t]), topics[t], tuple(examples))
        )
    oof = _out_of_fold_distances(x, k, config.folds, config.seed)
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.choice(n, size=min(config.reference_size, n), replace=False))
    profile = EmbeddingProfile(
        event_type=event_type,
        count=n,
        centroid=centroid,
        centroid_distance=Quantiles.from_values(1.0 - x @ centroid, config.distance_levels),
        topics=tuple(built),
        topic_distance=Quantiles.from_values(oof, config.distance_levels),
        # stored as float16: round now, so the profile in memory equals the one reloaded
        reference=x[pick].astype(np.float16).astype(np.float32),
        reference_topic_distance=oof[pick],
    )
    return profile, oof


def build_scalar_profile(
    quantity: Quantity, values: npt.ArrayLike, config: BaselineConfig = BaselineConfig()
) -> ScalarProfile:
    """The profile of one scalar quantity from its raw values (non-finite ones dropped)."""
    raw = np.asarray(values, dtype=np.float64).ravel()
    raw = raw[np.isfinite(raw)]
    if quantity.transform == "log1p":
        raw = raw[raw >= 0]
    t = quantity.transformed(raw)
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.choice(len(raw), size=min(config.reference_size, len(raw)), replace=False))
    std = float(t.std()) if len(t) else 0.0
    return ScalarProfile(
        quantity=quantity,
        summary=Quantiles.from_values(raw, config.levels),
        center=float(t.mean()) if len(t) else 0.0,
        scale=std if std > 0 else 1.0,
        reference=raw[pick],
    )


def build_baseline(
    segment: Mapping[str, str],
    *,
    embeddings: Mapping[str, npt.ArrayLike] | None = None,
    texts: Mapping[str, Sequence[str]] | None = None,
    scalars: Mapping[str, npt.ArrayLike] | None = None,
    quantities: Sequence[Quantity] = DEFAULT_QUANTITIES,
    config: BaselineConfig = BaselineConfig(),
    calibration: CalibrationConfig | None = CalibrationConfig(),
    embedding_model: str | None = None,
    source: Mapping[str, str] | None = None,
    created_at: datetime | None = None,
) -> Baseline:
    """A segment's baseline from arrays.

    ``embeddings``: event type -> unit vectors (rows); ``texts``: event type -> the texts of
    those rows, for topic examples and labels (optional); ``scalars``: quantity name -> raw
    values. Event types and quantities with fewer than ``config.min_rows`` values are left
    out. ``calibration``: detectors to calibrate for every stream (None: none; the monitor
    then uses the detectors' configured settings). ``source``: where the rows came from (a
    table and time range, a file), recorded as is.
    """
    texts = texts or {}
    profiles: dict[str, EmbeddingProfile] = {}
    replay: dict[str, npt.NDArray[np.float64]] = {}
    for event_type, vectors in sorted((embeddings or {}).items()):
        rows = np.asarray(vectors)
        if rows.ndim != 2 or len(rows) < config.min_rows:
            continue
        profile, oof = build_embedding_profile(event_type, rows, texts.get(event_type), config)
        profiles[event_type] = profile
        replay[embedding_stream("topic_distance", event_type)] = oof
        replay[embedding_stream("topic_surprise", event_type)] = profile.surprise(oof)
        replay[embedding_stream("embedding_distance", event_type)] = (
            1.0 - _unit_rows(rows, event_type) @ profile.centroid
        ).astype(np.float64)
    by_name = {q.name: q for q in quantities}
    scalar_profiles: dict[str, ScalarProfile] = {}
    for name, values in sorted((scalars or {}).items()):
        if name not in by_name:
            raise DriftError(f"no quantity named {name!r}; known: {sorted(by_name)}")
        raw = np.asarray(values, dtype=np.float64).ravel()
        if np.sum(np.isfinite(raw)) < config.min_rows:
            continue
        sp = build_scalar_profile(by_name[name], raw, config)
        scalar_profiles[name] = sp
        finite_raw = raw[np.isfinite(raw)]
        replay[name] = sp.standardise(
            finite_raw[finite_raw >= 0] if sp.quantity.transform == "log1p" else finite_raw
        )
    baseline = Baseline(
        segment=dict(segment),
        embeddings=profiles,
        scalars=scalar_profiles,
        calibration={},
        config=config.to_dict(),
        created_at=(created_at or datetime.now(UTC)).isoformat(),
        embedding_model=embedding_model,
        source=dict(source or {}),
    )
    calibrations: list[Calibration] = []
    if calibration is not None:
        for stream, values in sorted(replay.items()):
            statistic = stream.split(".", 1)[0]
            is_embedding = stream not in scalar_profiles
            if is_embedding and statistic not in calibration.statistics:
                continue
            spec = calibration.embedding_detector if is_embedding else calibration.scalar_detector
            calibrations.append(
                calibrate(
                    values,
                    spec.name,
                    stream=stream,
                    params=spec.params,
                    candidates=calibration.candidates.get(spec.name),
                    target_rate=calibration.target_rate,
                    events=calibration.events,
                    seed=calibration.seed,
                )
            )
    return baseline.with_calibration(calibrations)


def _embedding(event: Mapping[str, Any]) -> npt.NDArray[np.float32] | None:
    vector = event.get("embedding")
    if vector is None:
        return None
    v = np.asarray(vector, dtype=np.float32)
    return v if v.ndim == 1 and len(v) and np.all(np.isfinite(v)) else None


def build_baselines(
    rows: Iterable[Mapping[str, Any]],
    *,
    segment_fields: Sequence[str] = DEFAULT_SEGMENT_FIELDS,
    quantities: Sequence[Quantity] = DEFAULT_QUANTITIES,
    text_field: str = "text",
    config: BaselineConfig = BaselineConfig(),
    calibration: CalibrationConfig | None = CalibrationConfig(),
    source: Mapping[str, str] | None = None,
    created_at: datetime | None = None,
) -> dict[str, Baseline]:
    """Baselines by segment key from scored-event rows (dicts shaped like ``ScoredEvent``; a
    ``text_field`` entry, when present, gives topic examples). Rows of event types without
    embeddings (feedback) still count for the scalar quantities."""
    grouped: dict[str, dict[str, Any]] = {}
    for row in rows:
        fields = segment_of(row, segment_fields)
        g = grouped.setdefault(
            segment_key(fields),
            {"segment": fields, "vectors": {}, "texts": {}, "scalars": {}, "models": set()},
        )
        event_type = str(row.get("event_type") or "")
        vector = _embedding(row)
        if vector is not None and event_type in EMBEDDING_EVENT_TYPES:
            g["vectors"].setdefault(event_type, []).append(vector)
            g["texts"].setdefault(event_type, []).append(str(row.get(text_field) or ""))
            if row.get("embedding_model"):
                g["models"].add(str(row["embedding_model"]))
        for q in quantities:
            value = q.value(row)
            if value is not None:
                g["scalars"].setdefault(q.name, []).append(value)
    out: dict[str, Baseline] = {}
    for key, g in sorted(grouped.items()):
        dims = {len(v) for vs in g["vectors"].values() for v in vs}
        if len(dims) > 1:
            raise DriftError(f"segment {key!r} mixes embeddings of dimensions {sorted(dims)}")
        if len(g["models"]) > 1:
            raise DriftError(f"segment {key!r} mixes embedding models {sorted(g['models'])}")
        texts = {t: ts for t, ts in g["texts"].items() if any(ts)}  # all empty: no texts were given
        out[key] = build_baseline(
            g["segment"],
            embeddings={t: np.stack(vs) for t, vs in g["vectors"].items()},
            texts=texts,
            scalars=g["scalars"],
            quantities=quantities,
            config=config,
            calibration=calibration,
            embedding_model=next(iter(g["models"]), None),
            source=source,
            created_at=created_at,
        )
    return out


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Baseline",
    "BaselineConfig",
    "CalibrationConfig",
    "EmbeddingProfile",
    "ScalarProfile",
    "Topic",
    "build_baseline",
    "build_baselines",
    "build_embedding_profile",
    "build_scalar_profile",
    "content_version",
]
