"""The camera model of keypoint pixels: pinhole or fisheye intrinsics with OpenCV's distortion.

Two keyframes of a loop may come from different cameras, so every fit on their keypoints works on
undistorted normalized coordinates, each view through its own model.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Coefficient counts OpenCV's pinhole model accepts: k1 k2 p1 p2 [k3 [k4 k5 k6 [s1..s4 [tx ty]]]].
_PINHOLE_DISTORTION_LENGTHS = (0, 4, 5, 8, 12, 14)
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)


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
        points = pixel_points(points_px, "points_px").reshape(-1, 1, 2)
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


def pixel_points(points: np.ndarray, name: str) -> np.ndarray:
    """Pixel positions as float64 [N, 2]; ValueError naming ``name`` when they are not."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2] pixel positions, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite values")
    return array
