"""Which frames become map places: shared by `vpr build-map` and the node's slam mode.

Three criteria, each off at its neutral value, all of which a frame must pass against the last
keyframe: time since it, distance travelled since it (when poses are known), and appearance change
(cosine to its descriptor). With all three off every frame is a keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KeyframeConfig:
    min_interval_s: float = 0.0     # 0: no time criterion
    min_distance_m: float = 0.0     # 0: no distance criterion (also off where poses are unknown)
    max_similarity: float = 1.0     # 1: no appearance criterion; a frame this similar adds nothing

    def __post_init__(self) -> None:
        if self.min_interval_s < 0 or self.min_distance_m < 0:
            raise ValueError("keyframe min_interval_s and min_distance_m must be >= 0")
        if not -1.0 <= self.max_similarity <= 1.0:
            raise ValueError(f"keyframe max_similarity {self.max_similarity} must be in [-1, 1]")


class KeyframeSelector:
    def __init__(self, config: KeyframeConfig) -> None:
        self.config = config
        self._last: tuple[float, np.ndarray, np.ndarray | None] | None = None

    def reset(self) -> None:
        self._last = None

    def accept(self, stamp_s: float, desc: np.ndarray, pose: np.ndarray | None) -> bool:
        """True (and remembered as the last keyframe) when the frame is a new keyframe."""
        cfg = self.config
        if self._last is not None:
            last_stamp, last_desc, last_pose = self._last
            if stamp_s - last_stamp < cfg.min_interval_s:
                return False
            if cfg.min_distance_m > 0 and pose is not None and last_pose is not None \
                    and float(np.linalg.norm(np.asarray(pose[:3]) - last_pose[:3])) < cfg.min_distance_m:
                return False
            if cfg.max_similarity < 1.0 and float(desc @ last_desc) > cfg.max_similarity:
                return False
        self._last = (stamp_s, np.array(desc, dtype=np.float32), None if pose is None else np.asarray(pose))
        return True
