"""The drift monitor: scored events in, drift events out, per segment, against its baseline.

For each segment with a baseline, a :class:`SegmentMonitor` keeps one stream per embedded
event type and one per scalar quantity (:mod:`undertow.streams.drift.quantity`). Each stream
has an online detector and a window of its recent events. A scored event goes through:

1. its numbers: for an embedding, how improbable its distance to the nearest baseline topic
   is under the baseline (or another statistic, ``MonitorConfig.statistic``, see
   :mod:`undertow.streams.drift.quantity`); a scalar standardised by the baseline;
2. the stream's detector (ADWIN for embeddings, Page-Hinkley for scalars, with the settings
   the baseline's calibration measured), which compares the stream with its own past;
3. when the detector fires, a *pending* detection: the change point is estimated in the
   window (the split with the largest standardised difference of means), and the events that
   arrive after the detection (or all since the change point, ``window_from``) are tested
   against the baseline's reference sample
   (:mod:`undertow.streams.drift.confirm`: MMD and the novelty test for embeddings, a rank
   test for scalars). While it fails, the test is retried as the window grows (after
   ``recheck_every`` events, or a quarter of the window when that is more), for
   ``confirm_within`` events;
4. a confirmed test gives a drift event with ``detected=True``; a detection never confirmed
   gives one with ``detected=False`` (evidence, not an alarm).

Drift events are dicts shaped like ``schemas/avro/drift_event.v1.avsc``. Their ids are derived
from the baseline version, segment, stream and position, so a replay produces the same ids
(the sink deduplicates by them). The whole state is JSON-compatible (``to_state``), and a
monitor restored from it makes exactly the decisions of one that never stopped: detectors
have explicit state, windows keep float16 vectors from the start, and every random choice
(the permutations of the MMD test) is seeded from the segment, stream and position.

>>> monitor = DriftMonitor([baseline])  # doctest: +SKIP
>>> drift_events = monitor.update_many(scored_events)  # doctest: +SKIP
>>> state = monitor.to_state()  # doctest: +SKIP
>>> monitor = DriftMonitor.from_state([baseline], state)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from undertow.streams.drift.base import Detector, DriftError, create_detector, restore_detector
from undertow.streams.drift.baseline import Baseline, EmbeddingProfile, ScalarProfile
from undertow.streams.drift.confirm import (
    DEFAULT_ALPHA,
    DEFAULT_PERMUTATIONS,
    TestResult,
    mmd_test,
    novelty_test,
    rank_test,
)
from undertow.streams.drift.quantity import (
    DEFAULT_QUANTITIES,
    EMBEDDING_DETECTOR,
    SCALAR_DETECTOR,
    DetectorSpec,
    EmbeddingStatistic,
    Quantity,
    embedding_stream,
)
from undertow.streams.drift.segment import DEFAULT_SEGMENT_FIELDS, segment_key, segment_of
from undertow.streams.drift.window import Window

STATE_FORMAT = "undertow.drift.monitor"
STATE_VERSION = 1
_ID_NAMESPACE = uuid.UUID("5b0c7d3e-8f1a-4c2b-9d6e-7a8b9c0d1e2f")
Confirm = Literal["mmd+novelty", "mmd", "novelty", "none"]


@dataclass(frozen=True)
class MonitorConfig:
    """How the monitor watches every segment.

    ``statistic``: the number an embedding becomes for its detector. ``confirm``: the
    two-sample tests a detection must pass on embeddings (``mmd+novelty``: either, each at
    ``alpha / 2``; ``none``: every detection is a drift event); scalar streams use the rank
    test unless ``none``. ``use_calibration``: take a stream's detector settings from the
    baseline's calibration when it calibrated the same detector. ``window``: recent events
    kept per stream (the largest window tested); ``min_window``: the fewest events a test
    uses.

    ``window_from``: which events the confirmation tests. ``detection`` (the default): those
    that arrive after the detection, a second look at fresh data, independent of what made
    the detector fire, so a burst that has passed is not confirmed (on the benchmark's stable
    streams this removed the detector's false alarms, at the cost of waiting for
    ``min_window`` new events). ``change``: all since the estimated change point, quicker
    but re-testing the very events that fired the detector.

    ``cooldown``: after a confirmed drift on a stream, later confirmations on it within this
    many events are reported with ``detected=False``. Off by default: a drifted stream's
    detector restarts and may fire again on the new traffic, and each such detection
    confirms again (the traffic still differs from the baseline); the alerting rules
    deduplicate by segment and stream, while a cooldown here would also hide a new, real
    change that follows a false alarm. ``examples``/``nearest``: event ids and topics named
    in a drift event.
    """

    segment_fields: tuple[str, ...] = DEFAULT_SEGMENT_FIELDS
    statistic: EmbeddingStatistic = "topic_surprise"
    embedding_detector: DetectorSpec = EMBEDDING_DETECTOR
    scalar_detector: DetectorSpec = SCALAR_DETECTOR
    use_calibration: bool = True
    quantities: tuple[Quantity, ...] = DEFAULT_QUANTITIES
    confirm: Confirm = "mmd+novelty"
    alpha: float = DEFAULT_ALPHA
    permutations: int = DEFAULT_PERMUTATIONS
    window: int = 500
    min_window: int = 20
    window_from: Literal["detection", "change"] = "detection"
    recheck_every: int = 25
    confirm_within: int = 2000
    cooldown: int = 0
    examples: int = 5
    nearest: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.statistic not in ("topic_surprise", "topic_distance", "embedding_distance"):
            raise DriftError(f"unknown embedding statistic {self.statistic!r}")
        if self.confirm not in ("mmd+novelty", "mmd", "novelty", "none"):
            raise DriftError(f"unknown confirmation {self.confirm!r}")
        if self.window_from not in ("change", "detection"):
            raise DriftError(f"window_from must be change or detection, got {self.window_from!r}")
        if not 2 <= self.min_window <= self.window:
            raise DriftError(
                f"expected 2 <= min_window <= window, got {self.min_window} and {self.window}"
            )
        if self.recheck_every < 1 or self.confirm_within < 0 or self.cooldown < 0:
            raise DriftError("expected recheck_every >= 1, confirm_within >= 0, cooldown >= 0")
        if not 0.0 < self.alpha < 1.0:
            raise DriftError(f"alpha must be in (0, 1), got {self.alpha}")

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`to_dict`; segment states carry it."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """JSON form; a restored state is used only under an equal configuration."""
        return {
            "segment_fields": list(self.segment_fields),
            "statistic": self.statistic,
            "embedding_detector": [
                self.embedding_detector.name,
                dict(self.embedding_detector.params),
            ],
            "scalar_detector": [self.scalar_detector.name, dict(self.scalar_detector.params)],
            "use_calibration": self.use_calibration,
            "quantities": [q.to_dict() for q in self.quantities],
            "confirm": self.confirm,
            "alpha": self.alpha,
            "permutations": self.permutations,
            "window": self.window,
            "min_window": self.min_window,
            "window_from": self.window_from,
            "recheck_every": self.recheck_every,
            "confirm_within": self.confirm_within,
            "cooldown": self.cooldown,
            "examples": self.examples,
            "nearest": self.nearest,
            "seed": self.seed,
        }


@dataclass
class Pending:
    """A detection waiting for its confirmation: stream indices of the value that fired, of
    the estimated change point, of the first event the test uses, of the next test and of
    the last one allowed."""

    detected_at: int
    start: int
    window_start: int
    next_check: int
    deadline: int
    detector_statistic: float
    detector_threshold: float
    checks: int = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "detected_at": self.detected_at,
            "start": self.start,
            "window_start": self.window_start,
            "next_check": self.next_check,
            "deadline": self.deadline,
            "detector_statistic": self.detector_statistic,
            "detector_threshold": self.detector_threshold,
            "checks": self.checks,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Pending:
        return cls(
            detected_at=int(state["detected_at"]),
            start=int(state["start"]),
            window_start=int(state["window_start"]),
            next_check=int(state["next_check"]),
            deadline=int(state["deadline"]),
            detector_statistic=float(state["detector_statistic"]),
            detector_threshold=float(state["detector_threshold"]),
            checks=int(state["checks"]),
        )


@dataclass
class StreamMonitor:
    """One monitored stream of a segment: detector, recent window, pending detection."""

    name: str
    detector: Detector
    window: Window
    embedding: EmbeddingProfile | None = None
    scalar: ScalarProfile | None = None
    pending: Pending | None = None
    detections: int = 0  # values on which the detector fired
    quiet_until: int = -1  # stream index until which confirmations do not alert (cooldown)

    def change_point(self) -> int:
        """Stream index where the window's values most likely changed: the split maximising
        |mean after - mean before| * sqrt(k (n - k) / n)."""
        v = self.window.values()
        n = len(v)
        first = self.window.end - n
        if n < 4:
            return first
        c = np.cumsum(v)
        k = np.arange(1, n, dtype=np.float64)
        before = c[:-1] / k
        after = (c[-1] - c[:-1]) / (n - k)
        score = np.abs(after - before) * np.sqrt(k * (n - k) / n)
        return first + int(np.argmax(score)) + 1

    def to_state(self) -> dict[str, Any]:
        return {
            "detector": self.detector.to_state(),
            "window": self.window.to_state(),
            "pending": None if self.pending is None else self.pending.to_state(),
            "detections": self.detections,
            "quiet_until": self.quiet_until,
        }


@dataclass
class _Observation:
    """One event's numbers for one stream."""

    value: float
    raw: float
    vector: npt.NDArray[np.float32] | None = None
    topic: int = -1


def _detector_for(
    stream: str, spec: DetectorSpec, baseline: Baseline, use_calibration: bool
) -> Detector:
    calibrated = baseline.calibration.get(stream)
    if use_calibration and calibrated is not None and calibrated.detector == spec.name:
        return create_detector(spec.name, **dict(calibrated.params))
    return create_detector(spec.name, **dict(spec.params))


def _hex(text: str, digits: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:digits]


class SegmentMonitor:
    """Watches one segment's scored events against its baseline (see the module doc)."""

    def __init__(
        self,
        baseline: Baseline,
        config: MonitorConfig = MonitorConfig(),
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if tuple(baseline.segment) != tuple(config.segment_fields):
            raise DriftError(
                f"baseline {baseline.segment_key!r} has segment fields {list(baseline.segment)}, "
                f"the monitor uses {list(config.segment_fields)}"
            )
        self.baseline = baseline
        self.config = config
        self.clock = clock
        self.key = baseline.segment_key
        self.events = 0
        self.invalid = 0  # events whose embedding could not be used (dimension, NaN, zero)
        self.streams: dict[str, StreamMonitor] = {}
        self._embedding_streams: dict[str, StreamMonitor] = {}
        for event_type, profile in sorted(baseline.embeddings.items()):
            name = embedding_stream(config.statistic, event_type)
            s = StreamMonitor(
                name,
                _detector_for(name, config.embedding_detector, baseline, config.use_calibration),
                Window(config.window, profile.dim),
                embedding=profile,
            )
            self.streams[name] = s
            self._embedding_streams[event_type] = s
        self._scalar_streams: list[tuple[Quantity, StreamMonitor]] = []
        for q in config.quantities:
            sp = baseline.scalars.get(q.name)
            if sp is None:
                continue
            s = StreamMonitor(
                q.name,
                _detector_for(q.name, config.scalar_detector, baseline, config.use_calibration),
                Window(config.window),
                scalar=sp,
            )
            self.streams[q.name] = s
            self._scalar_streams.append((q, s))

    # -- feeding ---------------------------------------------------------------------------

    def update(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Feed one scored event; the drift events it completes (usually none)."""
        return self.update_many([event])

    def update_many(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Feed scored events in order; embedding distances are computed per batch, decisions
        are exactly those of feeding them one at a time."""
        observed = self._embedding_observations(events)
        out: list[dict[str, Any]] = []
        for i, event in enumerate(events):
            self.events += 1
            obs = observed.get(i)
            if obs is not None:
                stream = self._embedding_streams[str(event.get("event_type"))]
                out.extend(self._observe(stream, event, obs))
            for q, stream in self._scalar_streams:
                x = q.value(event)
                if x is not None:
                    assert stream.scalar is not None
                    z = float(stream.scalar.standardise(x))
                    out.extend(self._observe(stream, event, _Observation(z, x)))
        return out

    def _embedding_observations(
        self, events: Sequence[Mapping[str, Any]]
    ) -> dict[int, _Observation]:
        rows: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            kind = event.get("event_type")
            if kind in self._embedding_streams and event.get("embedding") is not None:
                rows.setdefault(str(kind), []).append(i)
        out: dict[int, _Observation] = {}
        for kind, idx in rows.items():
            profile = self._embedding_streams[kind].embedding
            assert profile is not None
            usable: list[int] = []
            vectors: list[npt.NDArray[np.float32]] = []
            for i in idx:
                v = np.asarray(events[i]["embedding"], dtype=np.float32)
                norm = float(np.linalg.norm(v)) if v.ndim == 1 else 0.0
                if v.shape != (profile.dim,) or not math.isfinite(norm) or norm == 0.0:
                    self.invalid += 1
                    continue
                usable.append(i)
                vectors.append(v / np.float32(norm))
            if not usable:
                continue
            x = np.stack(vectors)
            centroid, topic, nearest = profile.distances(x)
            if self.config.statistic == "topic_surprise":
                fed = profile.surprise(topic)
            else:
                fed = topic if self.config.statistic == "topic_distance" else centroid
            for j, i in enumerate(usable):
                out[i] = _Observation(float(fed[j]), float(topic[j]), x[j], int(nearest[j]))
        return out

    def _observe(
        self, stream: StreamMonitor, event: Mapping[str, Any], obs: _Observation
    ) -> list[dict[str, Any]]:
        cfg = self.config
        stream.window.append(
            str(event.get("event_id") or ""), obs.value, obs.raw, obs.vector, obs.topic
        )
        index = stream.window.end - 1
        if stream.detector.update(obs.value):
            stream.detections += 1
            if stream.pending is None:
                start = stream.change_point()
                last = stream.detector.last_detection
                first = index + 1 if cfg.window_from == "detection" else start
                stream.pending = Pending(
                    detected_at=index,
                    start=start,
                    window_start=first,
                    next_check=max(index, first + cfg.min_window - 1),
                    deadline=index + cfg.confirm_within,
                    detector_statistic=0.0 if last is None else last.statistic,
                    detector_threshold=0.0 if last is None else last.threshold,
                )
        pending = stream.pending
        if pending is None or index < pending.next_check:
            return []
        n = min(max(index - pending.window_start + 1, cfg.min_window), len(stream.window))
        if n < 2:
            pending.next_check = index + 1
            return []
        result = self._confirm(stream, n, index)
        pending.checks += 1
        if result.reject:
            stream.pending = None
            alert = index > stream.quiet_until
            if alert:
                stream.quiet_until = index + cfg.cooldown
            return [self._record(stream, event, result, alert, n, pending, index)]
        if index >= pending.deadline:
            stream.pending = None
            return [self._record(stream, event, result, False, n, pending, index)]
        pending.next_check = index + max(cfg.recheck_every, (index - pending.window_start + 1) // 4)
        return []

    # -- confirming ------------------------------------------------------------------------

    def _seed(self, stream: str, index: int) -> int:
        return (
            self.config.seed * 1_000_003 + zlib.crc32(f"{self.key}|{stream}|{index}".encode())
        ) % (2**32)

    def _confirm(self, stream: StreamMonitor, n: int, index: int) -> TestResult:
        cfg = self.config
        w = stream.window
        if cfg.confirm == "none":
            last = stream.detector.last_detection
            return TestResult(
                test="none",
                statistic=0.0 if last is None else last.statistic,
                threshold=0.0 if last is None else last.threshold,
                p_value=0.0,
                alpha=cfg.alpha,
                reject=True,
                reference_size=0,
                window_size=n,
            )
        if stream.scalar is not None:
            return rank_test(stream.scalar.reference, w.raw(n), alpha=cfg.alpha)
        profile = stream.embedding
        assert profile is not None
        alpha = cfg.alpha / 2 if cfg.confirm == "mmd+novelty" else cfg.alpha
        novelty: TestResult | None = None
        if cfg.confirm in ("mmd+novelty", "novelty"):
            novelty = novelty_test(
                profile.surprise(profile.reference_topic_distance),
                profile.surprise(w.raw(n)),
                alpha=alpha,
                seed=self._seed(stream.name, index),
            )
            if novelty.reject or cfg.confirm == "novelty":
                return novelty
        return mmd_test(
            profile.reference,
            w.vectors(n),
            alpha=alpha,
            permutations=cfg.permutations,
            seed=self._seed(stream.name, index),
        )

    # -- reporting -------------------------------------------------------------------------

    def _topics(self, stream: StreamMonitor, n: int) -> tuple[list[str], list[str]]:
        """Labels of the baseline topics nearest the window's centroid, and of those whose
        share of traffic fell most in the window (with the shares)."""
        profile = stream.embedding
        if profile is None or not profile.topics:
            return [], []
        centroid = stream.window.vectors(n).mean(axis=0)
        sims = profile.topic_matrix @ centroid
        nearest = [profile.topics[int(t)].label for t in np.argsort(-sims, kind="stable")]
        shares = np.bincount(stream.window.topics(n), minlength=len(profile.topics)) / n
        base = np.array([t.share for t in profile.topics])
        fell = base - shares[: len(base)]
        departed = [
            f"{profile.topics[int(t)].label} ({base[t]:.0%} -> {shares[t]:.0%})"
            for t in np.argsort(-fell, kind="stable")
            if fell[t] > 0
        ]
        k = self.config.nearest
        return nearest[:k], departed[:k]

    def _record(
        self,
        stream: StreamMonitor,
        event: Mapping[str, Any],
        result: TestResult,
        detected: bool,
        n: int,
        pending: Pending,
        index: int,
    ) -> dict[str, Any]:
        cfg, baseline = self.config, self.baseline
        w = stream.window
        ids = w.ids(n)
        farthest = w.raw(n) if stream.embedding is not None else np.abs(w.values(n))
        examples = [ids[int(i)] for i in np.argsort(-farthest, kind="stable")[: cfg.examples]]
        nearest, departed = self._topics(stream, n)
        source_id = str(event.get("event_id") or "")
        attributes = {
            "test": result.test,
            "p_value": f"{result.p_value:.6g}",
            "alpha": f"{result.alpha:.6g}",
            "detected_at": str(pending.detected_at),
            "change_start": str(pending.start),
            "confirmed_at": str(index),
            "checks": str(pending.checks),
            "detector_statistic": f"{pending.detector_statistic:.6g}",
            "detector_threshold": f"{pending.detector_threshold:.6g}",
            "window_mean": f"{float(np.mean(w.values(n))):.6g}",
            "baseline_created_at": baseline.created_at,
        }
        if result.reject and not detected:
            attributes["suppressed"] = f"cooldown until stream index {stream.quiet_until}"
        if result.bandwidth is not None:
            attributes["bandwidth"] = f"{result.bandwidth:.6g}"
        if stream.embedding is not None:
            attributes["departed_topics"] = json.dumps(departed, ensure_ascii=False)
            p99 = stream.embedding.topic_distance.quantile(0.99)
            attributes["share_beyond_baseline_p99"] = f"{float(np.mean(w.raw(n) > p99)):.4g}"
        trace_id = str(event.get("trace_id") or "")
        if len(trace_id) != 32:
            trace_id = _hex(f"trace|{source_id}", 32)
        event_time = event.get("event_time")
        return {
            "event_id": str(
                uuid.uuid5(
                    _ID_NAMESPACE,
                    f"{baseline.version}|{self.key}|{stream.name}|{index}|{int(detected)}",
                )
            ),
            "trace_id": trace_id,
            "span_id": _hex(f"drift|{self.key}|{stream.name}|{index}", 16),
            "parent_span_id": event.get("span_id"),
            "event_time": event_time if event_time is not None else self.clock(),
            "app": baseline.segment.get("app") or str(event.get("app") or ""),
            "environment": str(event.get("environment") or "production"),
            "user_hash": None,
            "session_hash": None,
            "attributes": attributes,
            "segment": self.key,
            "segment_fields": dict(baseline.segment),
            "stream": stream.name,
            "detector": f"{stream.detector.name}+{result.test}",
            "statistic": float(result.statistic),
            "threshold": float(result.threshold),
            "detected": detected,
            "window_reference": int(result.reference_size),
            "window_current": int(n),
            "baseline_version": baseline.version,
            "example_event_ids": examples,
            "nearest_topics": nearest,
        }

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-compatible state of this segment (detectors, windows, pending detections).

        Size: mostly the windows' vectors, ``window`` x dim x 2 bytes as base64 per embedded
        event type (about 0.5 MB for 500 MiniLM vectors), plus about 10 kB per scalar stream
        and window of 500. A Faust table value over Kafka's default 1 MB message limit needs a
        smaller ``window`` or a larger ``max.message.bytes``."""
        return {
            "config": self.config.fingerprint(),
            "baseline_version": self.baseline.version,
            "events": self.events,
            "invalid": self.invalid,
            "streams": {name: s.to_state() for name, s in sorted(self.streams.items())},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``to_state()`` of a monitor on the same baseline and configuration."""
        if state.get("config") != self.config.fingerprint():
            raise DriftError(f"state of segment {self.key!r} was saved under another MonitorConfig")
        if state.get("baseline_version") != self.baseline.version:
            raise DriftError(
                f"state of segment {self.key!r} was saved against baseline "
                f"{state.get('baseline_version')!r}, this monitor has {self.baseline.version!r}"
            )
        try:
            streams = state["streams"]
            if set(streams) != set(self.streams):
                raise DriftError(
                    f"state of segment {self.key!r} has streams {sorted(streams)}, this monitor "
                    f"{sorted(self.streams)}"
                )
            for name, s in self.streams.items():
                saved = streams[name]
                s.detector = restore_detector(saved["detector"])
                s.window = Window.from_state(saved["window"])
                s.pending = (
                    None if saved["pending"] is None else Pending.from_state(saved["pending"])
                )
                s.detections = int(saved["detections"])
                s.quiet_until = int(saved["quiet_until"])
            self.events = int(state["events"])
            self.invalid = int(state["invalid"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftError(f"could not restore segment {self.key!r}: {exc!r}") from exc


class DriftMonitor:
    """Routes scored events to the :class:`SegmentMonitor` of their segment.

    ``baselines``: one per segment (by key or as a list). Events of a segment without a
    baseline are counted in ``unbaselined`` and otherwise ignored.
    """

    def __init__(
        self,
        baselines: Mapping[str, Baseline] | Iterable[Baseline],
        config: MonitorConfig = MonitorConfig(),
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        items = baselines.values() if isinstance(baselines, Mapping) else baselines
        self.baselines: dict[str, Baseline] = {}
        for b in items:
            if tuple(b.segment) != tuple(config.segment_fields):
                raise DriftError(
                    f"baseline {b.segment_key!r} has segment fields {list(b.segment)}, the "
                    f"monitor uses {list(config.segment_fields)}"
                )
            if b.segment_key in self.baselines:
                raise DriftError(f"two baselines for segment {b.segment_key!r}")
            self.baselines[b.segment_key] = b
        self.config = config
        self.clock = clock
        self.segments: dict[str, SegmentMonitor] = {}
        self.unbaselined: dict[str, int] = {}
        self.discarded: list[str] = []  # segment states dropped on restore (baseline changed)

    def segment(self, key: str) -> SegmentMonitor | None:
        """The monitor of segment ``key`` (built on first use), or None without a baseline."""
        monitor = self.segments.get(key)
        if monitor is None and key in self.baselines:
            monitor = SegmentMonitor(self.baselines[key], self.config, clock=self.clock)
            self.segments[key] = monitor
        return monitor

    def update(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Feed one scored event; the drift events it completes."""
        return self.update_many([event])

    def update_many(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Feed scored events (a micro-batch, in partition order); drift events in order."""
        grouped: dict[str, list[Mapping[str, Any]]] = {}
        for event in events:
            key = segment_key(segment_of(event, self.config.segment_fields))
            grouped.setdefault(key, []).append(event)
        out: list[dict[str, Any]] = []
        for key, batch in grouped.items():
            monitor = self.segment(key)
            if monitor is None:
                self.unbaselined[key] = self.unbaselined.get(key, 0) + len(batch)
                continue
            out.extend(monitor.update_many(batch))
        return out

    def segment_states(self) -> dict[str, dict[str, Any]]:
        """Each segment's state by segment key: what a Faust table keyed by segment holds
        (the drift topic is keyed by segment too)."""
        return {k: m.to_state() for k, m in sorted(self.segments.items())}

    def restore_segment(self, key: str, state: Mapping[str, Any]) -> bool:
        """Continue segment ``key`` from its ``segment_states()`` entry; False (and the
        segment starts afresh, listed in ``discarded``) when its baseline has changed since
        or it has none now. Another configuration is refused (DriftError)."""
        baseline = self.baselines.get(key)
        if baseline is None or state.get("baseline_version") != baseline.version:
            self.discarded.append(key)
            self.segments.pop(key, None)
            return False
        monitor = SegmentMonitor(baseline, self.config, clock=self.clock)
        monitor.load_state(state)
        self.segments[key] = monitor
        return True

    def to_state(self) -> dict[str, Any]:
        """The whole state as JSON-compatible values (for a Faust table or a file)."""
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "config": self.config.to_dict(),
            "segments": self.segment_states(),
            "unbaselined": dict(sorted(self.unbaselined.items())),
        }

    @classmethod
    def from_state(
        cls,
        baselines: Mapping[str, Baseline] | Iterable[Baseline],
        state: Mapping[str, Any],
        config: MonitorConfig = MonitorConfig(),
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> DriftMonitor:
        """A monitor continuing from ``to_state()``. Segments whose baseline changed since
        (another version) start afresh and are listed in ``discarded``; a state saved under
        another configuration is refused."""
        if state.get("format") != STATE_FORMAT or state.get("format_version") != STATE_VERSION:
            raise DriftError(
                f"expected a {STATE_FORMAT} v{STATE_VERSION} state, got "
                f"{state.get('format')!r} v{state.get('format_version')!r}"
            )
        if json.dumps(state.get("config"), sort_keys=True) != json.dumps(
            config.to_dict(), sort_keys=True
        ):
            raise DriftError("this monitor state was saved under another MonitorConfig")
        out = cls(baselines, config, clock=clock)
        for key, saved in state.get("segments", {}).items():
            out.restore_segment(key, saved)
        out.unbaselined = {str(k): int(v) for k, v in state.get("unbaselined", {}).items()}
        return out


__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "DriftMonitor",
    "MonitorConfig",
    "Pending",
    "SegmentMonitor",
    "StreamMonitor",
]
