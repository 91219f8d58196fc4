"""Geometric verification of a loop candidate: do two images see the same 3-D scene?

Appearance alone cannot tell two identical-looking corridors apart; a consistent two-view geometry
(many feature matches agreeing on one fundamental or essential matrix) can. Local features come from
OpenCV (ORB or SIFT, chosen by name), matches are filtered with Lowe's ratio test, and RANSAC fits a
fundamental matrix, or an essential matrix when the camera intrinsics are known, in which case the
relative rotation and translation direction come out as well.

Features are extracted once per keyframe (``extract_features``) and kept instead of the image, so a
long SLAM run stores a few tens of kilobytes per keyframe rather than the whole picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

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
    ``intrinsics`` (fx, fy, cx, cy of the pixels the images are given in, both views taken by the
    same camera) switch from the fundamental matrix to the essential matrix, which has fewer degrees
    of freedom (so fewer lucky outlier fits) and yields the relative pose.
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

    def camera_matrix(self) -> np.ndarray | None:
        if self.intrinsics is None:
            return None
        fx, fy, cx, cy = self.intrinsics
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Features:
    """Keypoint positions (float32 [N, 2], pixels) and their descriptors (one row each)."""

    method: str
    points: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]  # (height, width)

    def __len__(self) -> int:
        return int(self.points.shape[0])


@dataclass(frozen=True)
class GeometryResult:
    """Outcome of verifying one pair.

    ``rotation`` and ``translation_dir`` (set only with intrinsics) map the first view's camera frame
    onto the second's: a point X in camera 1 is ``rotation @ X + s * translation_dir`` in camera 2
    for some unknown scale s > 0.
    """

    verified: bool
    inliers: int
    matches: int
    keypoints: tuple[int, int]
    rotation: np.ndarray | None = None
    translation_dir: np.ndarray | None = None


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


def extract_features(image: np.ndarray, config: GeometryConfig) -> Features:
    """Detect keypoints and describe them; ``image`` is RGB uint8 [H, W, 3] or gray [H, W]."""
    gray = _to_gray(image)
    factory, _ = FEATURES[config.method]
    keypoints, descriptors = factory(config.max_features).detectAndCompute(gray, None)
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    if descriptors is None:
        width = 32 if config.method == "orb" else 128
        descriptors = np.zeros((0, width), np.uint8 if config.method == "orb" else np.float32)
    return Features(config.method, points, descriptors, (gray.shape[0], gray.shape[1]))


def _ratio_matches(a: Features, b: Features, config: GeometryConfig) -> tuple[np.ndarray, np.ndarray]:
    _, norm = FEATURES[config.method]
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    knn = cv2.BFMatcher(norm).knnMatch(a.descriptors, b.descriptors, k=2)
    kept = [
        pair[0]
        for pair in knn
        if len(pair) == 2 and pair[0].distance < config.ratio_test * pair[1].distance
    ]
    pts_a = np.array([a.points[m.queryIdx] for m in kept], dtype=np.float32).reshape(-1, 2)
    pts_b = np.array([b.points[m.trainIdx] for m in kept], dtype=np.float32).reshape(-1, 2)
    return pts_a, pts_b


def verify_features(a: Features, b: Features, config: GeometryConfig) -> GeometryResult:
    """Match ``a`` to ``b`` and count the matches consistent with one two-view geometry."""
    if a.method != config.method or b.method != config.method:
        raise ValueError(
            f"features were extracted with {a.method!r}/{b.method!r} but the config asks for "
            f"{config.method!r}"
        )
    pts_a, pts_b = _ratio_matches(a, b, config)
    counts = (len(a), len(b))
    n = int(pts_a.shape[0])
    camera = config.camera_matrix()
    if n < (8 if camera is None else 5):
        return GeometryResult(False, 0, n, counts)
    if camera is None:
        fundamental, mask = cv2.findFundamentalMat(
            pts_a, pts_b, cv2.FM_RANSAC, config.ransac_threshold_px, config.ransac_confidence
        )
        # Without a model OpenCV may hand back an uninitialised mask, so it is read only with one.
        found = fundamental is not None and mask is not None
        inliers = int(np.count_nonzero(mask)) if found else 0
        return GeometryResult(inliers >= config.min_inliers, inliers, n, counts)
    essential, mask = cv2.findEssentialMat(
        pts_a, pts_b, camera, cv2.RANSAC, config.ransac_confidence, config.ransac_threshold_px
    )
    if essential is None or essential.shape != (3, 3):
        # Degenerate configurations return no matrix or several stacked ones; either way the
        # matches do not pin down one relative pose.
        return GeometryResult(False, 0, n, counts)
    # recoverPose keeps only the RANSAC inliers that lie in front of both cameras, so its count
    # is the number of matches that agree with one physically possible pose.
    inliers, rotation, translation, _ = cv2.recoverPose(essential, pts_a, pts_b, camera, mask=mask)
    inliers = int(inliers)
    t = translation.reshape(3)
    norm = float(np.linalg.norm(t))
    direction = t / norm if norm > 0 else None
    return GeometryResult(
        inliers >= config.min_inliers,
        inliers,
        n,
        counts,
        rotation=np.asarray(rotation, dtype=np.float64),
        translation_dir=direction,
    )


def verify_pair(image_a: np.ndarray, image_b: np.ndarray, config: GeometryConfig) -> GeometryResult:
    """Extract features from both images and verify them (for one-off checks and evaluation)."""
    return verify_features(extract_features(image_a, config), extract_features(image_b, config), config)
