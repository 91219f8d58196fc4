"""Precision and recall of loop closures: judging candidates against the ground truth, the
thresholds worth sweeping, and the figures a curve is summarised by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_core.loop import LoopCandidate


@dataclass
class OperatingPoint:
    threshold: float
    true_positives: int
    false_positives: int
    loop_frames: int

    @property
    def precision(self) -> float:
        emitted = self.true_positives + self.false_positives
        return self.true_positives / emitted if emitted else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.loop_frames if self.loop_frames else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def judge(candidates: Sequence[LoopCandidate], truth: Sequence[np.ndarray]) -> tuple[int, int]:
    """(true positives, false positives) of the emitted candidates."""
    tp = sum(1 for c in candidates if np.isin(c.match_id, truth[c.query_id]))
    return tp, len(candidates) - tp


def sweep_thresholds(best_scores: np.ndarray, steps: int, keep: Sequence[float] = ()) -> np.ndarray:
    """Thresholds at the observed best scores: the detector's decisions only change there (every
    gate sees the same top-1 at every threshold). Quantiles of them when there are more than
    ``steps``; ``keep`` (the default threshold) is always included, and one above every score."""
    scores = np.unique(best_scores[np.isfinite(best_scores)])
    if scores.size > steps:
        scores = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, steps)))
    above = np.nextafter(np.float64(scores.max()), np.inf) if scores.size else 1.0
    return np.unique(np.concatenate([scores, np.asarray(keep, np.float64), [above]]))


def summarize(points: Sequence[OperatingPoint], default_threshold: float) -> dict[str, Any]:
    """The figures the README reports for one curve."""
    perfect = [p for p in points if p.false_positives == 0 and p.true_positives > 0]
    at_100 = max(perfect, key=lambda p: (p.recall, -p.threshold), default=None)
    best = max(points, key=lambda p: (p.f1, p.threshold))
    default = next(p for p in points if p.threshold == default_threshold)
    return {
        "recall_at_100_precision": at_100.recall if at_100 else 0.0,
        "threshold_at_100_precision": at_100.threshold if at_100 else None,
        "best_f1": best.f1,
        "best_f1_threshold": best.threshold,
        "best_f1_precision": best.precision,
        "best_f1_recall": best.recall,
        "default_threshold": default_threshold,
        "default_false_positives": default.false_positives,
        "default_true_positives": default.true_positives,
        "default_precision": default.precision,
        "default_recall": default.recall,
    }
