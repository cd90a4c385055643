"""Online drift detection beside per-window batch checks: detection delay, false alarms, cost.

.venv/bin/python bench/drift_detection.py [--stable-events 1000000] [--runs 20]
    [--calibration-events 1000000] [--baseline-rows 5000] [--window 1000]

Traffic is real text: the chatterbot corpus (chatterbot-corpus 1.3.3). A tech-support
assistant's topics (tech_support, coding, computers, ai, botprofile, greetings,
conversations, emotion, psychology) are the usual traffic; general-knowledge topics (trivia,
history, sports, food, movies, literature, science, politics, money, humor, gossip, health)
are the shift. Every distinct utterance is embedded once with the real MiniLM model; streams
are then built by seeded resampling of those vectors: each stable event is a uniform draw
from the assistant texts, and after the shift a share p (10%, 30%, 100%) of events is drawn
from the general texts instead. The shift comes 4,000 to 5,000 events into a stream (seeded),
so it falls at any offset of a batch window.

The baseline is 5,000 stable events (its own seed); its detector settings are calibrated by
replaying 1,000,000 values resampled from those baseline rows (another seed) for a target of
at most 1 false alarm per 100,000 events. No stream reported below is used for calibration.

Methods, all on the same streams in the same run:

* online A, as the issue specifies: ADWIN on each event's cosine distance to the baseline
  centroid, confirmed by MMD (RBF, median heuristic, 200 seeded permutations, alpha 0.01)
  between the baseline's reference sample (512 rows) and the events after the detection;
* online B: ADWIN on each event's *surprise*, -ln(1 - F(d)) with d its distance to the
  nearest of the baseline's 32 k-means topics and F the baseline's distribution of d,
  confirmed by MMD as in A;
* online C, the monitor's default: as B, confirmed by MMD or by a permutation test of the
  mean surprise against the reference sample's (alpha 0.005 each), on the events after
  the detection;
* online D: as C, but testing every event since the estimated change point (quicker; it
  re-tests the events that fired the detector, so it confirms more false alarms);
* batch MMD: the kind of check drift tools run on a schedule: each window of 1,000 events
  against the same reference sample, MMD permutation test (200 permutations) at alpha 0.05;
* batch KS: each window's centroid distances against the baseline's, two-sample KS, 0.05.

Delay: events from the shift to the first drift event (online: when confirmed; batch: the
last event of the first window that rejects). False alarms: drift events on stable streams
(and before the shift), per 100,000 events, with a 95% upper bound. Cost: microseconds per
event of the whole monitor (distances, detector, window, tests when they run), one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.drift import (
    BaselineConfig,
    CalibrationConfig,
    DriftMonitor,
    MonitorConfig,
    build_baseline,
    mmd_test,
)
from undertow.streams.drift.baseline import Baseline
from undertow.streams.drift.calibration import rate_upper_bound
from undertow.streams.drift.corpus import ASSISTANT_TOPICS, GENERAL_TOPICS, load_topics
from undertow.streams.scoring.base import create_embedder

SEGMENT = {"app": "assistant", "model": "smollm2", "prompt_version": "v1"}
SHIFTS = (0.1, 0.3, 1.0)
BASELINE_SEED, CALIBRATION_SEED, STABLE_SEED, SHIFT_SEED = 11, 23, 1000, 2000
BATCH_ALPHA = 0.05


@dataclass
class Traffic:
    """Embedded corpus texts: the usual topics (``usual``) and the shift topics (``new``)."""

    vectors: npt.NDArray[np.float32]
    usual: npt.NDArray[np.int64]
    new: npt.NDArray[np.int64]

    def stream(
        self, seed: int, n: int, shift_at: int | None = None, share: float = 0.0
    ) -> npt.NDArray[np.int64]:
        """Row indices of a stream of ``n`` events: uniform over the usual texts, a ``share``
        of events from the new texts from ``shift_at`` on."""
        rng = np.random.default_rng(seed)
        rows = self.usual[rng.integers(0, len(self.usual), n)]
        if shift_at is not None:
            moved = (np.arange(n) >= shift_at) & (rng.random(n) < share)
            rows[moved] = self.new[rng.integers(0, len(self.new), int(moved.sum()))]
        return rows


def events_of(traffic: Traffic, rows: npt.NDArray[np.int64], tag: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{tag}-{i}",
            "event_type": "prompt",
            **SEGMENT,
            "embedding": traffic.vectors[r],
        }
        for i, r in enumerate(rows.tolist())
    ]


@dataclass
class Online:
    """An online method: a monitor configuration over the shared baseline."""

    name: str
    config: MonitorConfig
    batch: int = 100

    def detections(
        self, baseline: Baseline, traffic: Traffic, rows: npt.NDArray[np.int64], tag: str
    ) -> tuple[list[int], float]:
        """Stream indices of confirmed drift events, and the seconds the monitor took."""
        monitor = DriftMonitor([baseline], self.config)
        events = events_of(traffic, rows, tag)
        found: list[int] = []
        began = time.perf_counter()
        for start in range(0, len(events), self.batch):
            for d in monitor.update_many(events[start : start + self.batch]):
                if d["detected"]:
                    found.append(int(d["attributes"]["confirmed_at"]))
        return found, time.perf_counter() - began


@dataclass
class Batch:
    """A batch method: one two-sample test per window of ``window`` events."""

    name: str
    test: Callable[[npt.NDArray[np.int64], int], bool]  # (rows of a window, seed) -> reject
    window: int

    def detections(self, rows: npt.NDArray[np.int64], seed: int) -> tuple[list[int], float]:
        found: list[int] = []
        began = time.perf_counter()
        for w0 in range(0, len(rows) - self.window + 1, self.window):
            if self.test(rows[w0 : w0 + self.window], seed * 100_003 + w0):
                found.append(w0 + self.window - 1)
        return found, time.perf_counter() - began


@dataclass
class Tally:
    false_alarms: int = 0
    stable_events: int = 0
    seconds: float = 0.0
    timed_events: int = 0
    delays: dict[float, list[int | None]] = field(default_factory=dict)


def describe(delays: Sequence[int | None]) -> str:
    hit = [d for d in delays if d is not None]
    missed = len(delays) - len(hit)
    if not hit:
        return f"missed all {len(delays)}"
    out = f"{statistics.median(hit):6.0f} {statistics.mean(hit):6.0f} {np.percentile(hit, 90):6.0f}"
    return out + (f" ({missed} missed)" if missed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stable-events", type=int, default=1_000_000)
    parser.add_argument("--stable-streams", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20, help="shifted streams per shift size")
    parser.add_argument("--horizon", type=int, default=6000, help="events after the shift")
    parser.add_argument("--calibration-events", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=5000)
    parser.add_argument("--window", type=int, default=1000, help="batch window, events")
    parser.add_argument("--model-batch", type=int, default=64)
    parser.add_argument(
        "--vectors-cache",
        default=None,
        help="a .npy file to reuse the corpus vectors from (written when absent); default none",
    )
    args = parser.parse_args()

    from importlib.metadata import version

    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, Python {platform.python_version()}, numpy "
        f"{np.__version__}, river {version('river')}"
    )
    print("command: " + " ".join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")

    usual_texts = load_topics(ASSISTANT_TOPICS)
    new_texts = load_topics(GENERAL_TOPICS, exclude={u.text for u in usual_texts})
    embedder = create_embedder("minilm", batch_size=args.model_batch)
    began = time.perf_counter()
    corpus = [u.text for u in usual_texts + new_texts]
    cache = args.vectors_cache
    if cache and os.path.exists(cache):
        vectors = np.load(cache)
        how = f"read from {cache}"
        if len(vectors) != len(corpus):
            raise SystemExit(f"{cache} holds {len(vectors)} vectors, the corpus {len(corpus)}")
    else:
        vectors = embedder.embed(corpus)
        how = f"embedded once with {embedder.version} in {time.perf_counter() - began:.0f} s"
        if cache:
            np.save(cache, vectors)
    print(
        f"corpus: {len(usual_texts)} usual texts ({len(ASSISTANT_TOPICS)} topics), "
        f"{len(new_texts)} shift texts ({len(GENERAL_TOPICS)} topics), {how}"
    )
    traffic = Traffic(
        vectors=vectors,
        usual=np.arange(len(usual_texts)),
        new=np.arange(len(usual_texts), len(usual_texts) + len(new_texts)),
    )
    texts = [u.text for u in usual_texts + new_texts]

    began = time.perf_counter()
    base_rows = traffic.stream(BASELINE_SEED, args.baseline_rows)
    baseline = build_baseline(
        SEGMENT,
        embeddings={"prompt": traffic.vectors[base_rows]},
        texts={"prompt": [texts[r] for r in base_rows]},
        config=BaselineConfig(),
        calibration=CalibrationConfig(events=args.calibration_events, seed=CALIBRATION_SEED),
        embedding_model=embedder.version,
    )
    topics = len(baseline.embeddings["prompt"].topics)
    print(
        f"baseline: {args.baseline_rows} stable events, {topics} topics, version "
        f"{baseline.version}, built and calibrated in {time.perf_counter() - began:.0f} s"
    )
    for stream, c in sorted(baseline.calibration.items()):
        print(
            f"  calibrated {stream}: {c.detector} {c.parameter}={c.value:g}, {c.alarms} false "
            f"alarms in {c.events:,} replayed events (95% bound {c.rate_upper * 1e5:.2f} per "
            f"100k; tried {', '.join(f'{v:g}:{n}' for v, n in c.measured)})"
        )

    profile = baseline.embeddings["prompt"]
    base_distances = 1.0 - traffic.vectors[base_rows] @ profile.centroid

    def batch_mmd(rows: npt.NDArray[np.int64], seed: int) -> bool:
        result = mmd_test(
            profile.reference, traffic.vectors[rows], alpha=BATCH_ALPHA, permutations=200, seed=seed
        )
        return result.reject

    def batch_ks(rows: npt.NDArray[np.int64], seed: int) -> bool:
        from scipy.stats import ks_2samp

        window = 1.0 - traffic.vectors[rows] @ profile.centroid
        return bool(ks_2samp(window, base_distances).pvalue <= BATCH_ALPHA)

    online = [
        Online(
            "online A: ADWIN(centroid distance) + MMD",
            MonitorConfig(statistic="embedding_distance", confirm="mmd"),
        ),
        Online(
            "online B: ADWIN(topic surprise) + MMD",
            MonitorConfig(statistic="topic_surprise", confirm="mmd"),
        ),
        Online("online C (default): ADWIN(topic surprise) + MMD|novelty", MonitorConfig()),
        Online(
            "online D: as C, tests since the change point",
            MonitorConfig(window_from="change"),
        ),
    ]
    batch = [
        Batch(f"batch MMD per {args.window} events, a=0.05", batch_mmd, args.window),
        Batch(f"batch KS per {args.window} events, a=0.05", batch_ks, args.window),
    ]
    tallies: dict[str, Tally] = {m.name: Tally() for m in online}
    tallies.update({m.name: Tally() for m in batch})

    # stable streams: false alarms
    per_stream = args.stable_events // args.stable_streams
    for s in range(args.stable_streams):
        rows = traffic.stream(STABLE_SEED + s, per_stream)
        for o in online:
            found, seconds = o.detections(baseline, traffic, rows, f"stable{s}")
            t = tallies[o.name]
            t.false_alarms += len(found)
            t.stable_events += per_stream
            t.seconds += seconds
            t.timed_events += per_stream
        for b in batch:
            found, seconds = b.detections(rows, STABLE_SEED + s)
            t = tallies[b.name]
            t.false_alarms += len(found)
            t.stable_events += per_stream
            t.seconds += seconds
            t.timed_events += per_stream
        print(f"  stable stream {s + 1}/{args.stable_streams} done", flush=True)

    # shifted streams: delays (and false alarms before the shift)
    for share in SHIFTS:
        for run in range(args.runs):
            seed = SHIFT_SEED + run + int(share * 1000) * 1000
            shift_at = 4000 + int(np.random.default_rng(seed).integers(0, 1000))
            rows = traffic.stream(seed, shift_at + args.horizon, shift_at, share)
            results: list[tuple[str, list[int]]] = []
            for o in online:
                results.append((o.name, o.detections(baseline, traffic, rows, f"shift{seed}")[0]))
            for b in batch:
                results.append((b.name, b.detections(rows, seed)[0]))
            for name, found in results:
                t = tallies[name]
                t.false_alarms += sum(1 for i in found if i < shift_at)
                t.stable_events += shift_at
                after = [i - shift_at for i in found if i >= shift_at]
                t.delays.setdefault(share, []).append(after[0] if after else None)
        print(f"  shift {share:.0%}: {args.runs} streams done", flush=True)

    print()
    print(
        f"delay = events from the shift to the first drift event: median / mean / p90 over "
        f"{args.runs} streams per shift (missed: none within {args.horizon:,} events)"
    )
    width = max(len(name) for name in tallies)
    header = f"{'method':{width}s} " + " ".join(f"{f'{s:.0%} shift':>26s}" for s in SHIFTS)
    header += f" {'false alarms/100k (95% bound)':>30s} {'us/event':>9s}"
    print(header)
    for name, t in tallies.items():
        cells = " ".join(f"{describe(t.delays[s]):>26s}" for s in SHIFTS)
        rate = t.false_alarms / t.stable_events * 1e5
        bound = rate_upper_bound(t.false_alarms, t.stable_events) * 1e5
        fa = f"{rate:.2f} ({bound:.2f}) of {t.stable_events:,}"
        print(f"{name:{width}s} {cells} {fa:>30s} {t.seconds / t.timed_events * 1e6:9.1f}")
    print()

    def mean_delay(name: str, share: float) -> float:
        """Mean delay, a miss counting as the whole horizon."""
        return statistics.mean(
            args.horizon if d is None else d for d in tallies[name].delays[share]
        )

    def alarm_rate(name: str) -> float:
        return tallies[name].false_alarms / tallies[name].stable_events * 1e5

    print("goal: >= 3x earlier than every batch check at every shift size, at most 1 false alarm")
    print("per 100,000 stable events and no more than the batch check's (a miss counts as the")
    print(f"whole {args.horizon:,}-event horizon):")
    for o in online:
        ratios = [
            min(mean_delay(b.name, s) for b in batch) / max(mean_delay(o.name, s), 1.0)
            for s in SHIFTS
        ]
        met = (
            min(ratios) >= 3.0
            and alarm_rate(o.name) <= 1.0
            and all(alarm_rate(o.name) <= alarm_rate(b.name) for b in batch)
        )
        print(
            f"  {o.name}: "
            + ", ".join(f"{s:.0%} {r:.1f}x" for s, r in zip(SHIFTS, ratios, strict=True))
            + f", {alarm_rate(o.name):.2f} false alarms per 100k: {'met' if met else 'NOT met'}"
        )

    # cost with embeddings as the wire gives them (lists of floats), micro-batches of 100
    rows = traffic.stream(STABLE_SEED + 99, 20_000)
    events = events_of(traffic, rows, "cost")
    for e in events:
        e["embedding"] = e["embedding"].tolist()
    monitor = DriftMonitor([baseline], MonitorConfig())
    began = time.perf_counter()
    for start in range(0, len(events), 100):
        monitor.update_many(events[start : start + 100])
    print(
        f"cost, default monitor, embeddings as float lists, micro-batches of 100: "
        f"{(time.perf_counter() - began) / len(events) * 1e6:.1f} us/event"
    )


if __name__ == "__main__":
    main()
