"""Poses as 7-vectors (x y z qx qy qz qw), the layout of geometry_msgs/Pose and of the map's records.

One representation everywhere (bags, odometry, map records, messages), with scipy's Rotation doing
the quaternion algebra, so that composing, inverting and interpolating are written once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

IDENTITY = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])


def as_pose(values: Sequence[float] | np.ndarray, name: str = "pose") -> np.ndarray:
    """A validated float64 7-vector with a unit quaternion (refuses a zero or non-finite one)."""
    pose = np.asarray(values, dtype=np.float64).reshape(-1)
    if pose.shape != (7,) or not np.isfinite(pose).all():
        raise ValueError(f"{name} must be 7 finite numbers (x y z qx qy qz qw), got {list(np.ravel(values))!r}")
    norm = float(np.linalg.norm(pose[3:]))
    if norm < 1e-6:
        raise ValueError(f"{name} has a zero quaternion (qx qy qz qw); the identity is 0 0 0 1")
    return np.concatenate([pose[:3], pose[3:] / norm])


def rotation(pose: np.ndarray) -> Rotation:
    return Rotation.from_quat(pose[3:])


def from_rt(rot: Rotation | np.ndarray, translation: np.ndarray) -> np.ndarray:
    """The pose of a rotation (Rotation or 3x3 matrix) and a translation."""
    rot = rot if isinstance(rot, Rotation) else Rotation.from_matrix(rot)
    return np.concatenate([np.asarray(translation, dtype=np.float64).reshape(3), rot.as_quat()])


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b: with a = T_x_y and b = T_y_z, the pose T_x_z."""
    ra = rotation(a)
    return from_rt(ra * rotation(b), a[:3] + ra.apply(b[:3]))


def inverse(a: np.ndarray) -> np.ndarray:
    inv = rotation(a).inv()
    return from_rt(inv, -inv.apply(a[:3]))


def interpolate(stamps_ns: np.ndarray, poses: np.ndarray, stamp_ns: int, *, max_span_ns: int,
                max_extrapolation_ns: int) -> np.ndarray | None:
    """The pose at ``stamp_ns`` from time-sorted poses: linear in position and spherical-linear in
    orientation between the two poses around it, when they are at most ``max_span_ns`` apart.

    Outside the recorded interval the nearest pose stands in for at most ``max_extrapolation_ns``
    (the newest odometry message usually lags the image a little); beyond that, or across a gap
    longer than ``max_span_ns``, the pose is unknown (None): a stale pose would put a keyframe at
    the wrong spot, which is worse than none.
    """
    n = stamps_ns.size
    if n == 0:
        return None
    i = int(np.searchsorted(stamps_ns, stamp_ns))
    if i < n and stamps_ns[i] == stamp_ns:
        return poses[i].copy()
    if i == 0 or i == n:
        j = 0 if i == 0 else n - 1
        return poses[j].copy() if abs(int(stamps_ns[j]) - stamp_ns) <= max_extrapolation_ns else None
    t0, t1 = int(stamps_ns[i - 1]), int(stamps_ns[i])
    if t1 - t0 > max_span_ns:
        return None
    w = (stamp_ns - t0) / (t1 - t0)
    position = (1.0 - w) * poses[i - 1, :3] + w * poses[i, :3]
    slerp = Slerp([0.0, 1.0], Rotation.from_quat(poses[i - 1 : i + 1, 3:]))
    return from_rt(slerp([w])[0], position)
