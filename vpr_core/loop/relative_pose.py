"""Relative pose of a loop closure, with the transform type and a first-order 6x6 covariance.

A pose-graph back end needs more than "these two keyframes are the same place": it needs the
transform between them and how far to trust each of its six directions. What two views can tell
depends on the data, so the result says which kind of transform it is:

- ``METRIC``        depth is known for one keyframe's keypoints: PnP gives the full transform in metres;
- ``UP_TO_SCALE``   monocular views with parallax: the essential matrix gives the rotation and the
                    direction of the translation, never its length;
- ``ROTATION_ONLY`` monocular views without parallax (the camera turned on the spot, or the scene is
                    far away): only the rotation is observable;
- ``NONE``          nothing is known.

Convention (fixed, here and in the fits that produce it: ``pose_estimation``, ``pnp_pose``,
``essential_pose``): the transform is **T_match_query**, the pose of the query keyframe's camera in
the frame of the matched keyframe's camera (OpenCV optical frames: x right, y down, z forward). A
point p_query in query-camera coordinates is ``p_match = rotation @ p_query + translation``.

Covariance: 6x6 of (x, y, z, rot x, rot y, rot z), in the matched camera's frame, for the
perturbation true R = exp([dθ]x) R (dθ a small rotation vector in match-frame axes) and
true t = t + dt. It is the first-order estimate σ² (JᵀJ)⁻¹, J the Jacobian of the inliers' pixel
residuals with respect to the free parameters (central differences), σ² their residual variance
(sum r² / (n_residuals - n_params)) floored at ``RelativePoseConfig.min_sigma_px``², so that exact
synthetic data does not claim zero uncertainty. Directions the measurement does not observe get
``UNOBSERVED_VARIANCE``. For ``UP_TO_SCALE`` the translation is a unit vector t: its block is the
perpendicular uncertainty of that direction plus ``UNOBSERVED_VARIANCE`` t tᵀ along it; a consumer
that knows the scale s uses s t and multiplies the perpendicular part (and the cross terms) by s²
(respectively s).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NONE = 0
ROTATION_ONLY = 1
UP_TO_SCALE = 2
METRIC = 3
KIND_NAMES = {NONE: "none", ROTATION_ONLY: "rotation_only", UP_TO_SCALE: "up_to_scale", METRIC: "metric"}
UNOBSERVED_VARIANCE = 1.0e6


@dataclass(frozen=True)
class RelativePose:
    """T_match_query (see the module docstring): ``kind`` (NONE, ROTATION_ONLY, UP_TO_SCALE or
    METRIC), ``rotation`` 3x3, ``translation`` (3,) (metres for METRIC, a unit vector for
    UP_TO_SCALE, zeros otherwise), ``covariance`` 6x6 of (x, y, z, rot x, rot y, rot z) in the match
    camera's frame, and ``inliers``, the number of matches consistent with the transform."""

    kind: int
    rotation: np.ndarray
    translation: np.ndarray
    covariance: np.ndarray
    inliers: int

    @classmethod
    def none(cls) -> RelativePose:
        """No transform: identity, every direction unobserved."""
        return cls(NONE, np.eye(3), np.zeros(3), np.eye(6) * UNOBSERVED_VARIANCE, 0)

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]

    def quaternion(self) -> tuple[float, float, float, float]:
        """The rotation as a unit quaternion (x, y, z, w), w >= 0."""
        rvec = cv2.Rodrigues(np.asarray(self.rotation, np.float64))[0].ravel()
        angle = float(np.linalg.norm(rvec))
        axis = rvec / angle if angle > 0 else np.zeros(3)
        x, y, z = axis * np.sin(angle / 2)
        return float(x), float(y), float(z), float(np.cos(angle / 2))


@dataclass(frozen=True)
class RelativePoseConfig:
    """How a relative pose is estimated.

    ``ransac_threshold_px``: inlier distance of the essential matrix (Sampson) and of the
    pure-rotation model, in pixels. ``min_inliers``: fewer matches consistent with the transform
    give no result. ``min_sigma_px``: floor of the pixel noise behind the covariance.
    ``pnp_threshold_px``/``pnp_iterations``: RANSAC of the PnP (metric) case, which is tried only
    with at least ``min_depth_points`` matches whose depth lies in [``min_depth_m``, ``max_depth_m``]
    (depth sensors are unreliable outside their range).
    """

    ransac_threshold_px: float = 2.0
    ransac_confidence: float = 0.999
    min_inliers: int = 15
    min_sigma_px: float = 0.5
    pnp_threshold_px: float = 3.0
    pnp_iterations: int = 1000
    min_depth_points: int = 12
    min_depth_m: float = 0.1
    max_depth_m: float = 20.0

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"RelativePoseConfig.{name}={getattr(self, name)!r} {rule}")

        check(self.ransac_threshold_px > 0, "ransac_threshold_px", "must be > 0")
        check(0.0 < self.ransac_confidence < 1.0, "ransac_confidence", "must be in (0, 1)")
        check(self.min_inliers >= 6, "min_inliers", "must be >= 6 (a pose needs more than its 5-6 parameters)")
        check(self.min_sigma_px > 0, "min_sigma_px", "must be > 0")
        check(self.pnp_threshold_px > 0, "pnp_threshold_px", "must be > 0")
        check(self.pnp_iterations >= 1, "pnp_iterations", "must be >= 1")
        check(self.min_depth_points >= 6, "min_depth_points", "must be >= 6 (PnP needs at least 4, refined 6)")
        check(
            0.0 < self.min_depth_m < self.max_depth_m,
            "min_depth_m",
            f"must be in (0, max_depth_m={self.max_depth_m})",
        )


@dataclass(frozen=True)
class MatchedView:
    """One side of the matches: normalized coordinates [N, 2], (fx, fy), depth [N] or None."""

    normalized: np.ndarray
    focal: np.ndarray
    depth: np.ndarray | None
