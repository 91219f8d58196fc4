"""Geometric verification of a loop candidate: do two images see the same 3-D scene?

Appearance alone cannot tell two identical-looking corridors apart; a consistent two-view geometry
(many feature matches agreeing on one fundamental or essential matrix) can. Local features come from
OpenCV (ORB or SIFT, chosen by name), matches are filtered with Lowe's ratio test, and RANSAC fits a
fundamental matrix; when both views have a camera model the matches go to
``vpr_core.loop.pose_estimation.estimate_relative_pose`` instead, which gives the relative pose
T_match_query (metric with depth, else up to scale or rotation only) with its covariance.

Features are extracted once per keyframe (``extract_features``) and kept instead of the image, so a
long SLAM run stores a few tens of kilobytes per keyframe rather than the whole picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from vpr_core.loop.camera_model import CameraModel
from vpr_core.loop.pose_estimation import estimate_relative_pose
from vpr_core.loop.relative_pose import RelativePose, RelativePoseConfig

__all__ = [
    "FEATURES",
    "Features",
    "GeometryConfig",
    "GeometryResult",
    "extract_features",
    "verify_features",
    "verify_pair",
]


@dataclass(frozen=True)
class GeometryConfig:
    """How two views are compared.

    ``ratio_test`` is Lowe's ratio: a match is kept only when its descriptor distance is below
    ``ratio_test`` times that of the second-best match, which drops the ambiguous matches that
    repetitive texture (doors, ceiling lights) produces. ``ransac_threshold_px`` is the largest
    distance in pixels from a point to its epipolar line that still counts as an inlier.
    ``intrinsics`` (fx, fy, cx, cy, no distortion) is the camera of features extracted without
    one; with a camera for both views the fundamental matrix gives way to the relative pose, whose
    model has fewer degrees of freedom (so fewer lucky outlier fits).
    """

    method: str = "orb"
    max_features: int = 1000
    ratio_test: float = 0.8
    min_inliers: int = 30
    ransac_threshold_px: float = 2.0
    ransac_confidence: float = 0.999
    intrinsics: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.method not in FEATURES:
            raise ValueError(
                f"GeometryConfig.method={self.method!r} is unknown; choose one of {sorted(FEATURES)}"
            )
        if self.max_features < 8:
            raise ValueError(f"GeometryConfig.max_features={self.max_features} must be >= 8")
        if not 0.0 < self.ratio_test <= 1.0:
            raise ValueError(f"GeometryConfig.ratio_test={self.ratio_test} must be in (0, 1]")
        if self.min_inliers < 5:
            raise ValueError(
                f"GeometryConfig.min_inliers={self.min_inliers} must be >= 5 "
                "(the fewest points that determine an essential matrix)"
            )
        if not self.ransac_threshold_px > 0.0:
            raise ValueError(
                f"GeometryConfig.ransac_threshold_px={self.ransac_threshold_px} must be > 0"
            )
        if not 0.0 < self.ransac_confidence < 1.0:
            raise ValueError(
                f"GeometryConfig.ransac_confidence={self.ransac_confidence} must be in (0, 1)"
            )
        if self.intrinsics is not None:
            values = tuple(float(v) for v in self.intrinsics)
            if len(values) != 4 or not all(np.isfinite(values)) or values[0] <= 0 or values[1] <= 0:
                raise ValueError(
                    f"GeometryConfig.intrinsics={self.intrinsics!r} must be (fx, fy, cx, cy) "
                    "with finite values and fx, fy > 0"
                )
            object.__setattr__(self, "intrinsics", values)

    def camera(self) -> CameraModel | None:
        """The fallback camera of features that carry none."""
        return None if self.intrinsics is None else CameraModel(*self.intrinsics)

    def pose_config(self) -> RelativePoseConfig:
        """The relative-pose settings: this config's RANSAC, and the fewest inliers any pose needs,
        since ``verify_features`` applies ``min_inliers`` to the pose's inlier count itself (so
        a rejected pair still reports how many inliers it had)."""
        return RelativePoseConfig(
            ransac_threshold_px=self.ransac_threshold_px,
            ransac_confidence=self.ransac_confidence,
            min_inliers=6,
        )


@dataclass(frozen=True)
class Features:
    """Keypoint positions (float32 [N, 2], pixels) and their descriptors (one row each), with the
    camera that took the image and the depth of each keypoint (metres, NaN unknown) when known."""

    method: str
    points: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]  # (height, width)
    camera: CameraModel | None = None
    depth: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])


@dataclass(frozen=True)
class GeometryResult:
    """Outcome of verifying one pair (a = query, b = match).

    ``relative`` (only when both views have a camera, and only for a verified pair) is
    T_match_query = T_b_a: a point p_a in camera a's frame is
    ``relative.rotation @ p_a + relative.translation`` in camera b's frame (see ``relative_pose``).
    """

    verified: bool
    inliers: int
    matches: int
    keypoints: tuple[int, int]
    relative: RelativePose | None = None


def _orb(max_features: int) -> cv2.Feature2D:
    return cv2.ORB_create(nfeatures=max_features)


def _sift(max_features: int) -> cv2.Feature2D:
    return cv2.SIFT_create(nfeatures=max_features)


# name -> (detector factory, descriptor norm for brute-force matching)
FEATURES: dict[str, tuple[Callable[[int], cv2.Feature2D], int]] = {
    "orb": (_orb, cv2.NORM_HAMMING),
    "sift": (_sift, cv2.NORM_L2),
}


def _to_gray(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    else:
        raise ValueError(
            f"image must be grayscale [H, W] or RGB [H, W, 3], got shape {tuple(image.shape)}"
        )
    if min(gray.shape) < 16:
        raise ValueError(f"image of shape {tuple(image.shape)} is too small for local features")
    return np.ascontiguousarray(gray)


def extract_features(
    image: np.ndarray,
    config: GeometryConfig,
    camera: CameraModel | None = None,
    depth_image: np.ndarray | None = None,
) -> Features:
    """Detect keypoints and describe them; ``image`` is RGB uint8 [H, W, 3] or gray [H, W].

    ``depth_image`` is registered to the image (same size): uint16 millimetres or float metres, 0 or
    non-finite where unknown; each keypoint keeps the depth of its nearest pixel (interpolating
    across a depth edge would invent a surface between foreground and background).
    """
    gray = _to_gray(image)
    factory, _ = FEATURES[config.method]
    keypoints, descriptors = factory(config.max_features).detectAndCompute(gray, None)
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    if descriptors is None:
        width = 32 if config.method == "orb" else 128
        descriptors = np.zeros((0, width), np.uint8 if config.method == "orb" else np.float32)
    depth = None if depth_image is None else _sample_depth(depth_image, gray.shape, points)
    return Features(config.method, points, descriptors, (gray.shape[0], gray.shape[1]), camera, depth)


def _sample_depth(depth_image: np.ndarray, shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Depth in metres (float32, NaN unknown) of the pixel nearest to each point."""
    if not isinstance(depth_image, np.ndarray) or depth_image.shape != shape:
        raise ValueError(
            f"depth_image must be a [H, W] array of the image's size {shape}, got "
            f"{getattr(depth_image, 'shape', type(depth_image).__name__)}"
        )
    if depth_image.dtype == np.uint16:
        metres = depth_image.astype(np.float32) / 1000.0
    elif np.issubdtype(depth_image.dtype, np.floating):
        metres = depth_image.astype(np.float32)
    else:
        raise ValueError(
            f"depth_image must be uint16 millimetres or float metres, got dtype {depth_image.dtype}"
        )
    cols = np.clip(np.rint(points[:, 0]).astype(int), 0, shape[1] - 1)
    rows = np.clip(np.rint(points[:, 1]).astype(int), 0, shape[0] - 1)
    depth = metres[rows, cols]
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


def _ratio_matches(a: Features, b: Features, config: GeometryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``a`` and ``b`` of the matches that pass the ratio test."""
    _, norm = FEATURES[config.method]
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    knn = cv2.BFMatcher(norm).knnMatch(a.descriptors, b.descriptors, k=2)
    kept = [
        pair[0]
        for pair in knn
        if len(pair) == 2 and pair[0].distance < config.ratio_test * pair[1].distance
    ]
    return (
        np.array([m.queryIdx for m in kept], dtype=int),
        np.array([m.trainIdx for m in kept], dtype=int),
    )


def verify_features(a: Features, b: Features, config: GeometryConfig) -> GeometryResult:
    """Match ``a`` (query) to ``b`` (match) and count the matches consistent with one two-view
    geometry: the relative pose when both views have a camera (their own, else ``config.intrinsics``),
    else a fundamental matrix."""
    if a.method != config.method or b.method != config.method:
        raise ValueError(
            f"features were extracted with {a.method!r}/{b.method!r} but the config asks for "
            f"{config.method!r}"
        )
    index_a, index_b = _ratio_matches(a, b, config)
    counts = (len(a), len(b))
    n = int(index_a.size)
    fallback = config.camera()
    camera_a = a.camera if a.camera is not None else fallback
    camera_b = b.camera if b.camera is not None else fallback
    if camera_a is None or camera_b is None:
        return _fundamental(a.points[index_a], b.points[index_b], counts, config)
    relative = estimate_relative_pose(
        a.points[index_a],
        b.points[index_b],
        camera_a,
        camera_b,
        query_depth=None if a.depth is None else a.depth[index_a],
        match_depth=None if b.depth is None else b.depth[index_b],
        config=config.pose_config(),
    )
    inliers = 0 if relative is None else relative.inliers
    verified = inliers >= config.min_inliers
    return GeometryResult(verified, inliers, n, counts, relative if verified else None)


def _fundamental(
    pts_a: np.ndarray, pts_b: np.ndarray, counts: tuple[int, int], config: GeometryConfig
) -> GeometryResult:
    n = int(pts_a.shape[0])
    if n < 8:
        return GeometryResult(False, 0, n, counts)
    fundamental, mask = cv2.findFundamentalMat(
        pts_a, pts_b, cv2.FM_RANSAC, config.ransac_threshold_px, config.ransac_confidence
    )
    # Without a model OpenCV may hand back an uninitialised mask, so it is read only with one.
    found = fundamental is not None and mask is not None
    inliers = int(np.count_nonzero(mask)) if found else 0
    return GeometryResult(inliers >= config.min_inliers, inliers, n, counts)


def verify_pair(image_a: np.ndarray, image_b: np.ndarray, config: GeometryConfig) -> GeometryResult:
    """Extract features from both images and verify them (for one-off checks and evaluation)."""
    return verify_features(extract_features(image_a, config), extract_features(image_b, config), config)
