"""The robot's pose from an accepted place match, with a covariance a localization stack can weigh.

A place match says "the camera is where the map camera was", no more: its error is the spacing of
the map's places and the viewpoint change between visits, which no per-frame measurement here
observes. So the covariance comes from configured standard deviations (what the map's place spacing
and the route allow), widened when the match is weak: with margin m (best score minus the best score
at a distinct place, ``AcceptanceConfig.min_margin`` is its acceptance floor),

    widening = clamp(full_margin / m, 1, max_widening),  std = configured std * widening

so a match that barely beat a look-alike place is reported with up to ``max_widening`` times the
standard deviation (``max_widening``^2 the variance) of a clear one. A match whose top results all
lie at the same place (no distinct competitor) counts as clear.

The map stores camera poses; the published pose is that of the base, T_map_base = T_map_camera *
inverse(T_base_camera).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vpr_core import poses


@dataclass(frozen=True)
class PoseConfig:
    position_std_m: float = 2.0
    rotation_std_deg: float = 15.0
    full_margin: float = 0.1
    max_widening: float = 10.0

    def __post_init__(self) -> None:
        for name in ("position_std_m", "rotation_std_deg", "full_margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"PoseConfig.{name}={value!r} must be a finite number > 0")
        if not (math.isfinite(self.max_widening) and self.max_widening >= 1.0):
            raise ValueError(f"PoseConfig.max_widening={self.max_widening!r} must be >= 1")


@dataclass(frozen=True)
class PoseEstimate:
    """The base's pose (x y z qx qy qz qw) in the map's frame and its 6x6 covariance over (x, y, z,
    rotation about x, y, z) in that frame."""

    pose: np.ndarray
    covariance: np.ndarray
    widening: float


def widening(margin: float | None, config: PoseConfig) -> float:
    if margin is None:
        return 1.0
    return float(np.clip(config.full_margin / max(margin, 1e-9), 1.0, config.max_widening))


def estimate_pose(camera_pose: np.ndarray, margin: float | None, base_to_camera: np.ndarray,
                  config: PoseConfig) -> PoseEstimate:
    """The base pose of a robot whose camera stands at the matched place's ``camera_pose``."""
    factor = widening(margin, config)
    position_var = (config.position_std_m * factor) ** 2
    rotation_var = (math.radians(config.rotation_std_deg) * factor) ** 2
    covariance = np.diag([position_var] * 3 + [rotation_var] * 3)
    base = poses.compose(poses.as_pose(camera_pose, "place pose"), poses.inverse(base_to_camera))
    return PoseEstimate(base, covariance, factor)
