"""When a frame's retrieval counts as a localization: the thresholds its best match must pass (the
node's ``localization.*`` parameters, and how many matches a result reports) and the margin over
the best match at a distinct place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AcceptanceConfig:
    """The accept rule of one frame's matches (the whole pipeline's settings are ``LocalizerConfig``)."""

    top_k: int = 5
    min_score: float = 0.5
    # The best match must beat the best match at a *distinct* place (id further than
    # `distinct_places` from it) by this much: two places that look alike are not a localization.
    min_margin: float = 0.02
    distinct_places: int = 5
    # A frame showing next to nothing (RMS contrast below this, vpr_core.loop.contrast) is never an
    # accepted localization: it matches every other dark or blank frame with a high score.
    min_contrast: float = 0.03


def margin_of(ids: np.ndarray, scores: np.ndarray, cfg: AcceptanceConfig) -> float | None:
    """Best score minus the best score at a place more than ``distinct_places`` ids away."""
    distinct = np.abs(ids - ids[0]) > cfg.distinct_places
    return float(scores[0] - scores[distinct][0]) if distinct.any() else None
