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

Convention (fixed, everywhere in this module): the transform is **T_match_query**, the pose of the
query keyframe's camera in the frame of the matched keyframe's camera (OpenCV optical frames: x
right, y down, z forward). A point p_query in query-camera coordinates is
``p_match = rotation @ p_query + translation``.

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
from typing import Callable

import cv2
import numpy as np

__all__ = [
    "KIND_NAMES",
    "METRIC",
    "NONE",
    "ROTATION_ONLY",
    "UNOBSERVED_VARIANCE",
    "UP_TO_SCALE",
    "CameraModel",
    "RelativePose",
    "RelativePoseConfig",
    "estimate_relative_pose",
]

NONE = 0
ROTATION_ONLY = 1
UP_TO_SCALE = 2
METRIC = 3
KIND_NAMES = {NONE: "none", ROTATION_ONLY: "rotation_only", UP_TO_SCALE: "up_to_scale", METRIC: "metric"}
UNOBSERVED_VARIANCE = 1.0e6

# Coefficient counts OpenCV's pinhole model accepts: k1 k2 p1 p2 [k3 [k4 k5 k6 [s1..s4 [tx ty]]]].
_PINHOLE_DISTORTION_LENGTHS = (0, 4, 5, 8, 12, 14)
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
_JACOBIAN_STEP = 1e-6
_REFINE_STEPS = 10
_REFINE_ROUNDS = 4


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of the pixels the keypoints are given in, with OpenCV's distortion.

    ``distortion`` is in OpenCV order (k1 k2 p1 p2 [k3 k4 k5 k6 ...]), empty for none; with
    ``fisheye`` it is the four equidistant coefficients k1..k4 of ``cv2.fisheye``.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()
    fisheye: bool = False

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            value = float(getattr(self, name))
            if not np.isfinite(value):
                raise ValueError(f"CameraModel.{name}={getattr(self, name)!r} must be finite")
            object.__setattr__(self, name, value)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"CameraModel focal lengths fx={self.fx}, fy={self.fy} must be > 0")
        distortion = tuple(float(v) for v in self.distortion)
        if not all(np.isfinite(distortion)):
            raise ValueError(f"CameraModel.distortion={self.distortion!r} has non-finite values")
        allowed = (0, 4) if self.fisheye else _PINHOLE_DISTORTION_LENGTHS
        if len(distortion) not in allowed:
            model = "fisheye" if self.fisheye else "pinhole"
            raise ValueError(
                f"CameraModel.distortion has {len(distortion)} coefficients; the {model} model takes "
                f"one of {allowed}"
            )
        object.__setattr__(self, "distortion", distortion)

    @classmethod
    def from_camera_info(cls, k, d, distortion_model: str) -> CameraModel:
        """From the fields of a ROS ``sensor_msgs/CameraInfo``: K (9 values, row-major), D and
        distortion_model ('plumb_bob', 'rational_polynomial', 'equidistant', or '' / 'none')."""
        k = np.asarray(k, dtype=np.float64).ravel()
        if k.size != 9:
            raise ValueError(f"CameraInfo K must have 9 values (3x3 row-major), got {k.size}")
        if not np.any(k):
            raise ValueError("CameraInfo K is all zeros, which ROS uses for an uncalibrated camera")
        fx, skew, cx, _, fy, cy = k[:6]
        if fx <= 0 or fy <= 0:
            raise ValueError(f"CameraInfo K has fx={fx}, fy={fy}; both must be > 0 (uncalibrated camera?)")
        if skew != 0.0 or tuple(k[6:]) != (0.0, 0.0, 1.0) or k[3] != 0.0:
            raise ValueError(f"CameraInfo K={k.tolist()} is not [fx 0 cx; 0 fy cy; 0 0 1] (skew is not supported)")
        d = tuple(float(v) for v in np.asarray(d, dtype=np.float64).ravel())
        model = (distortion_model or "").strip().lower()
        if model in ("", "none"):
            if any(d):
                raise ValueError(f"CameraInfo D={list(d)} is non-zero but distortion_model is {distortion_model!r}")
            return cls(fx, fy, cx, cy)
        if model == "equidistant":
            return cls(fx, fy, cx, cy, d, fisheye=True)
        if model not in ("plumb_bob", "rational_polynomial"):
            raise ValueError(
                f"CameraInfo distortion_model {distortion_model!r} is not supported; use 'plumb_bob', "
                "'rational_polynomial', 'equidistant' or 'none'"
            )
        return cls(fx, fy, cx, cy, d)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def focal(self) -> np.ndarray:
        """(fx, fy): turns normalized-coordinate errors into pixels."""
        return np.array([self.fx, self.fy])

    def normalize(self, points_px: np.ndarray) -> np.ndarray:
        """Undistorted normalized coordinates [N, 2] (x/z, y/z) of pixel positions [N, 2]."""
        points = _points(points_px, "points_px").reshape(-1, 1, 2)
        if points.shape[0] == 0:
            return np.zeros((0, 2))
        distortion = np.array(self.distortion) if self.distortion else None
        if self.fisheye:
            if distortion is None:
                distortion = np.zeros(4)
            normalized = cv2.fisheye.undistortPoints(
                points, self.matrix(), distortion, R=np.eye(3), P=np.eye(3), criteria=_UNDISTORT_CRITERIA
            )
        else:
            normalized = cv2.undistortPoints(
                points, self.matrix(), distortion, R=np.eye(3), P=np.eye(3), criteria=_UNDISTORT_CRITERIA
            )
        return normalized.reshape(-1, 2).astype(np.float64)


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


def estimate_relative_pose(
    query_px: np.ndarray,
    match_px: np.ndarray,
    query_camera: CameraModel,
    match_camera: CameraModel,
    *,
    query_depth: np.ndarray | None = None,
    match_depth: np.ndarray | None = None,
    config: RelativePoseConfig | None = None,
) -> RelativePose | None:
    """T_match_query from N matched keypoints (``query_px[i]`` and ``match_px[i]``, pixels [N, 2]).

    ``match_depth``/``query_depth`` (metres [N], NaN or <= 0 unknown) make the result METRIC via
    PnP, the matched keyframe's depth first. Otherwise the essential matrix is fitted to the
    undistorted normalized coordinates (each view through its own camera). Model selection between
    UP_TO_SCALE and ROTATION_ONLY: a pure rotation is fitted (Kabsch) to the bearing vectors of the
    essential matrix's inliers; when its median reprojection error is below ``ransac_threshold_px``
    the rotation alone explains the data, the translation cannot be seen and the kind is
    ROTATION_ONLY. None when no model has ``min_inliers`` inliers or the data is degenerate.
    """
    config = RelativePoseConfig() if config is None else config
    query, match = _points(query_px, "query_px"), _points(match_px, "match_px")
    if query.shape[0] != match.shape[0]:
        raise ValueError(f"query_px has {query.shape[0]} points but match_px has {match.shape[0]}")
    count = query.shape[0]
    query_depth = _depths(query_depth, count, "query_depth", config)
    match_depth = _depths(match_depth, count, "match_depth", config)
    query_view = _View(query_camera.normalize(query), query_camera.focal(), query_depth)
    match_view = _View(match_camera.normalize(match), match_camera.focal(), match_depth)

    if _enough_depth(match_depth, config):
        pose = _metric(match_view, query_view, config, depth_in_match=True)
        if pose is not None:
            return pose
    if _enough_depth(query_depth, config):
        pose = _metric(query_view, match_view, config, depth_in_match=False)
        if pose is not None:
            return pose
    return _monocular(query_view, match_view, config)


@dataclass(frozen=True)
class _View:
    """One side of the matches: normalized coordinates [N, 2], (fx, fy), depth [N] or None."""

    normalized: np.ndarray
    focal: np.ndarray
    depth: np.ndarray | None


def _points(points: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2] pixel positions, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite values")
    return array


def _depths(depth: np.ndarray | None, count: int, name: str, config: RelativePoseConfig) -> np.ndarray | None:
    """Depth [N] with NaN wherever it is unknown or outside the configured range."""
    if depth is None:
        return None
    array = np.asarray(depth, dtype=np.float64).ravel().copy()
    if array.size != count:
        raise ValueError(f"{name} has {array.size} values for {count} points")
    with np.errstate(invalid="ignore"):
        valid = (array >= config.min_depth_m) & (array <= config.max_depth_m)
    array[~valid] = np.nan
    return array


def _enough_depth(depth: np.ndarray | None, config: RelativePoseConfig) -> bool:
    return depth is not None and int(np.count_nonzero(np.isfinite(depth))) >= config.min_depth_points


def _homogeneous(normalized: np.ndarray) -> np.ndarray:
    return np.concatenate([normalized, np.ones((normalized.shape[0], 1))], axis=1)


def _project(points: np.ndarray, focal: np.ndarray) -> np.ndarray:
    """Normalized coordinates, in pixel units, of 3-D points [N, 2] (behind the camera: huge)."""
    z = points[:, 2:3]
    safe = np.where(z > 1e-9, z, 1e-9)
    return points[:, :2] / safe * focal


def _jacobian(residual: Callable[[np.ndarray], np.ndarray], n_params: int) -> np.ndarray:
    """Central differences: the residuals are cheap, and an analytic Jacobian per model would be
    more code to get wrong than the first-order covariance is worth."""
    columns = []
    for k in range(n_params):
        step = np.zeros(n_params)
        step[k] = _JACOBIAN_STEP
        columns.append((residual(step) - residual(-step)) / (2 * _JACOBIAN_STEP))
    return np.stack(columns, axis=1)


def _parameter_covariance(
    residual: Callable[[np.ndarray], np.ndarray], n_params: int, min_sigma_px: float
) -> np.ndarray | None:
    """σ² (JᵀJ)⁻¹ at the estimate (zero perturbation); None when the parameters are not observable."""
    r0 = residual(np.zeros(n_params))
    dof = r0.size - n_params
    if dof <= 0:
        return None
    jacobian = _jacobian(residual, n_params)
    information = jacobian.T @ jacobian
    if np.linalg.cond(information) > 1e12:
        return None
    sigma2 = max(float(r0 @ r0) / dof, min_sigma_px**2)
    return sigma2 * np.linalg.inv(information)


def _rotate(rotation: np.ndarray, dtheta: np.ndarray) -> np.ndarray:
    """Left perturbation exp([dθ]x) R: dθ is in the match frame, as the covariance is."""
    return cv2.Rodrigues(np.asarray(dtheta, np.float64))[0] @ rotation


def _symmetric(covariance: np.ndarray) -> np.ndarray:
    return (covariance + covariance.T) / 2


def _metric(
    depth_view: _View, image_view: _View, config: RelativePoseConfig, *, depth_in_match: bool
) -> RelativePose | None:
    """PnP from the 3-D points of the view with depth to the keypoints of the other view."""
    known = np.flatnonzero(np.isfinite(depth_view.depth))
    points3d = _homogeneous(depth_view.normalized[known]) * depth_view.depth[known, None]
    # Undistorted pixels (principal point at 0): OpenCV's PnP thresholds and its LM termination
    # are tuned for pixel-sized errors, and stop short of the minimum on normalized coordinates.
    observed = image_view.normalized[known] * image_view.focal
    camera = np.diag([image_view.focal[0], image_view.focal[1], 1.0])
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points3d,
        observed,
        camera,
        None,
        iterationsCount=config.pnp_iterations,
        reprojectionError=config.pnp_threshold_px,
        confidence=config.ransac_confidence,
    )
    if not ok or inliers is None or len(inliers) < config.min_inliers:
        return None
    # RANSAC judges inliers by a minimal-sample model, which is worst far from its sample, so it
    # tends to drop the points that constrain the pose most: refine, re-select, until stable.
    inliers = np.sort(inliers.ravel())
    for _ in range(_REFINE_ROUNDS):
        rvec, tvec = cv2.solvePnPRefineLM(points3d[inliers], observed[inliers], camera, None, rvec, tvec)
        r_id, t_id = cv2.Rodrigues(rvec)[0], tvec.ravel()  # T_image_depth: x_image = R x_depth + t
        errors = np.linalg.norm(_project(points3d @ r_id.T + t_id, image_view.focal) - observed, axis=1)
        selected = np.flatnonzero(errors < config.pnp_threshold_px)
        if np.array_equal(selected, inliers) or selected.size < config.min_inliers:
            break
        inliers = selected
    if selected.size < config.min_inliers:
        return None
    if depth_in_match:
        rotation, translation = r_id.T, -r_id.T @ t_id
    else:
        rotation, translation = r_id, t_id
    points3d, observed = points3d[inliers], observed[inliers]

    def residual(params: np.ndarray) -> np.ndarray:
        r = _rotate(rotation, params[3:])
        t = translation + params[:3]
        # T_match_query perturbed; the points are mapped into the image view's camera.
        in_image = (points3d - t) @ r if depth_in_match else points3d @ r.T + t
        return (_project(in_image, image_view.focal) - observed).ravel()

    covariance = _parameter_covariance(residual, 6, config.min_sigma_px)
    if covariance is None:
        return None
    return RelativePose(METRIC, rotation, translation, _symmetric(covariance), int(inliers.size))


def _monocular(query: _View, match: _View, config: RelativePoseConfig) -> RelativePose | None:
    count = query.normalized.shape[0]
    if count < config.min_inliers:
        return None
    focal = float(np.mean([np.mean(query.focal), np.mean(match.focal)]))
    threshold = config.ransac_threshold_px / focal
    essential, mask = cv2.findEssentialMat(
        query.normalized, match.normalized, np.eye(3), cv2.RANSAC, config.ransac_confidence, threshold
    )
    # Degenerate data gives no matrix or several stacked ones: then only a rotation can explain it.
    valid = essential is not None and essential.shape == (3, 3) and mask is not None
    candidates = mask.ravel() > 0 if valid else np.ones(count, bool)
    rotation_only = _rotation_only(query, match, candidates, config)
    if rotation_only is not None or not valid:
        return rotation_only
    # recoverPose keeps the inliers in front of both cameras: one physically possible pose.
    inliers, rotation, translation, pose_mask = cv2.recoverPose(
        essential, query.normalized, match.normalized, np.eye(3), mask=mask.copy()
    )
    if int(inliers) < config.min_inliers:
        return None
    chosen = pose_mask.ravel() > 0
    translation = translation.ravel() / np.linalg.norm(translation)
    return _up_to_scale(query, match, chosen, rotation, translation, config)


def _kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation R minimising sum |target - R source|² over unit vectors [N, 3]; by hand with numpy's
    SVD because OpenCV's 3-D estimators also fit a translation (and scale)."""
    u, _, vt = np.linalg.svd(source.T @ target)
    sign = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, sign]) @ u.T


def _rotation_errors(rotation: np.ndarray, query: _View, match: _View, rows: np.ndarray) -> np.ndarray:
    rotated = _homogeneous(query.normalized[rows]) @ rotation.T
    return np.linalg.norm(_project(rotated, match.focal) - match.normalized[rows] * match.focal, axis=1)


def _rotation_only(
    query: _View, match: _View, candidates: np.ndarray, config: RelativePoseConfig
) -> RelativePose | None:
    """The pure-rotation model, when its median error over ``candidates`` is below the threshold."""
    rows = np.flatnonzero(candidates)
    if rows.size < config.min_inliers:
        return None
    bearings_q = _unit(_homogeneous(query.normalized[rows]))
    bearings_m = _unit(_homogeneous(match.normalized[rows]))
    rotation = _kabsch(bearings_q, bearings_m)
    errors = _rotation_errors(rotation, query, match, rows)
    if not np.median(errors) < config.ransac_threshold_px:
        return None
    keep = errors < config.ransac_threshold_px
    inliers = rows[keep]
    if inliers.size < config.min_inliers:
        return None
    rotation = _kabsch(bearings_q[keep], bearings_m[keep])
    rays = _homogeneous(query.normalized[inliers])
    observed = match.normalized[inliers] * match.focal

    def residual(dtheta: np.ndarray) -> np.ndarray:
        return (_project(rays @ _rotate(rotation, dtheta).T, match.focal) - observed).ravel()

    rotation_cov = _parameter_covariance(residual, 3, config.min_sigma_px)
    if rotation_cov is None:
        return None
    covariance = np.eye(6) * UNOBSERVED_VARIANCE
    covariance[3:, 3:] = _symmetric(rotation_cov)
    return RelativePose(ROTATION_ONLY, rotation, np.zeros(3), covariance, int(inliers.size))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _sampson_px(essential: np.ndarray, query: _View, match: _View, rows: np.ndarray) -> np.ndarray:
    """Sampson distance of each match in pixels of the undistorted images.

    Written out because OpenCV's ``sampsonDistance`` takes one pair and one matrix for both images;
    here the gradient of x_mᵀ E x_q is taken with respect to each image's own pixels (1/fx, 1/fy),
    so two cameras with different focal lengths are weighted correctly.
    """
    x_q = _homogeneous(query.normalized[rows])
    x_m = _homogeneous(match.normalized[rows])
    e_xq = x_q @ essential.T
    et_xm = x_m @ essential
    gradient = np.concatenate([et_xm[:, :2] / query.focal, e_xq[:, :2] / match.focal], axis=1)
    return np.sum(x_m * e_xq, axis=1) / np.linalg.norm(gradient, axis=1)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _tangent(translation: np.ndarray) -> np.ndarray:
    """Orthonormal basis [3, 2] of the plane perpendicular to the unit vector ``translation``."""
    return np.linalg.svd(translation[None, :])[2][1:].T


def _essential_residual(
    rotation: np.ndarray, translation: np.ndarray, query: _View, match: _View, rows: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Sampson residuals (pixels) of ``rows`` as a function of the 5 free parameters: dθ and 2 on
    the tangent plane of the unit translation."""
    tangent = _tangent(translation)

    def residual(params: np.ndarray) -> np.ndarray:
        t = translation + tangent @ params[3:]
        essential = _skew(t / np.linalg.norm(t)) @ _rotate(rotation, params[:3])
        return _sampson_px(essential, query, match, rows)

    return residual


def _refine_essential(
    rotation: np.ndarray, translation: np.ndarray, query: _View, match: _View, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton on the inliers' Sampson distances, starting from the RANSAC model.

    RANSAC returns the best minimal-sample model, which with a few hundred noisy keypoints can be
    off by degrees; OpenCV has no essential-matrix refinement, so these few steps are written here.
    A step that does not lower the cost ends the refinement.
    """
    residual = _essential_residual(rotation, translation, query, match, rows)
    cost = float(np.sum(residual(np.zeros(5)) ** 2))
    for _ in range(_REFINE_STEPS):
        jacobian = _jacobian(residual, 5)
        step = -np.linalg.lstsq(jacobian, residual(np.zeros(5)), rcond=None)[0]
        t = translation + _tangent(translation) @ step[3:]
        new_rotation, new_translation = _rotate(rotation, step[:3]), t / np.linalg.norm(t)
        new_residual = _essential_residual(new_rotation, new_translation, query, match, rows)
        new_cost = float(np.sum(new_residual(np.zeros(5)) ** 2))
        if not new_cost < cost:
            break
        rotation, translation, residual, cost = new_rotation, new_translation, new_residual, new_cost
    return rotation, translation


def _up_to_scale(
    query: _View,
    match: _View,
    chosen: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    config: RelativePoseConfig,
) -> RelativePose | None:
    rows = np.flatnonzero(chosen)
    everything = np.arange(query.normalized.shape[0])
    # As for PnP: RANSAC's inliers come from a minimal-sample model, so refine and re-select (by
    # Sampson distance, then in front of both cameras) until the inliers settle.
    for _ in range(_REFINE_ROUNDS):
        rotation, translation = _refine_essential(rotation, translation, query, match, rows)
        essential = _skew(translation) @ rotation
        close = np.abs(_sampson_px(essential, query, match, everything)) < config.ransac_threshold_px
        mask = close.astype(np.uint8)[:, None]
        _, _, _, mask = cv2.recoverPose(essential, query.normalized, match.normalized, np.eye(3), mask=mask)
        selected = np.flatnonzero(mask.ravel() > 0)
        if np.array_equal(selected, rows) or selected.size < config.min_inliers:
            break
        rows = selected
    params_cov = _parameter_covariance(
        _essential_residual(rotation, translation, query, match, rows), 5, config.min_sigma_px
    )
    if params_cov is None:
        return None
    # (dθ, δ) -> (dt, dθ) with dt = B δ to first order.
    to_pose = np.zeros((6, 5))
    to_pose[:3, 3:] = _tangent(translation)
    to_pose[3:, :3] = np.eye(3)
    covariance = to_pose @ params_cov @ to_pose.T
    covariance[:3, :3] += UNOBSERVED_VARIANCE * np.outer(translation, translation)
    return RelativePose(UP_TO_SCALE, rotation, translation, _symmetric(covariance), int(rows.size))
