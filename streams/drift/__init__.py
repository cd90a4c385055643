"""Online drift detection against per-segment baselines: the pure core of the drift processor.

The pieces, each its own module:

* :mod:`.baseline`: what a segment's traffic looked like (embedding centroid, spread and
  topics; quantiles of toxicity, injection, tokens, latency, cost), built from rows, saved as
  versioned JSON;
* :mod:`.base`, :mod:`.adwin`, :mod:`.page_hinkley`: online detectors behind one small
  interface, registered by name, with explicit state;
* :mod:`.calibration`: detector settings chosen by replaying stable streams until the false
  alarm rate is measured under a target;
* :mod:`.confirm`: windowed two-sample tests against the baseline (MMD, rank tests);
* :mod:`.monitor`: scored events in, drift events (``undertow.drift.v1``) out, per segment,
  with JSON state that a restarted worker resumes exactly.

Importing the package registers the built-in detectors.
"""

from undertow.streams.drift import adwin, page_hinkley
from undertow.streams.drift.base import (
    Detection,
    Detector,
    DriftError,
    available_detectors,
    create_detector,
    register_detector,
    restore_detector,
)
from undertow.streams.drift.baseline import (
    Baseline,
    BaselineConfig,
    CalibrationConfig,
    build_baseline,
    build_baselines,
)
from undertow.streams.drift.calibration import Calibration, calibrate
from undertow.streams.drift.confirm import TestResult, mmd_test, novelty_test, rank_test
from undertow.streams.drift.monitor import DriftMonitor, MonitorConfig, SegmentMonitor
from undertow.streams.drift.quantity import DEFAULT_QUANTITIES, DetectorSpec, Quantity
from undertow.streams.drift.segment import DEFAULT_SEGMENT_FIELDS, segment_key, segment_of

__all__ = [
    "DEFAULT_QUANTITIES",
    "DEFAULT_SEGMENT_FIELDS",
    "Baseline",
    "BaselineConfig",
    "Calibration",
    "CalibrationConfig",
    "Detection",
    "Detector",
    "DetectorSpec",
    "DriftError",
    "DriftMonitor",
    "MonitorConfig",
    "Quantity",
    "SegmentMonitor",
    "TestResult",
    "adwin",
    "available_detectors",
    "build_baseline",
    "build_baselines",
    "calibrate",
    "create_detector",
    "mmd_test",
    "novelty_test",
    "page_hinkley",
    "rank_test",
    "register_detector",
    "restore_detector",
    "segment_key",
    "segment_of",
]
