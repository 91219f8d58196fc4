"""A keyframe as the detector receives it, and the checks that keep bad input out of its state.

Every check runs before the detector changes anything, so a keyframe that fails one raises
ValueError/TypeError and leaves the detector exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass

import numpy as np

from vpr_core.loop.camera_model import CameraModel


@dataclass
class Keyframe:
    """One keyframe as the encoder and odometry give it.

    ``pose`` is x y z qx qy qz qw (only the position is used, for travelled distance); ``image`` is
    RGB uint8 [H, W, 3] and is needed only with geometric verification; ``contrast`` is
    ``vpr_core.loop.contrast.image_contrast`` of the image (None: unknown, never rejected).
    ``camera`` is the model of the image's pixels (None: ``LoopConfig.intrinsics``); ``depth`` a
    depth image registered to it (same size, uint16 mm or float m, 0/NaN unknown), which makes the
    relative pose of a loop closed with this keyframe metric. Features keep one depth per keypoint,
    not the image.
    """

    id: int
    stamp: float
    desc: np.ndarray
    code: np.ndarray
    pose: np.ndarray | None = None
    image: np.ndarray | None = None
    contrast: float | None = None
    camera: CameraModel | None = None
    depth: np.ndarray | None = None


@dataclass(frozen=True)
class CheckedKeyframe:
    """A keyframe's inputs as the detector keeps them: a private copy of the code, the descriptor
    scaled to unit length, the position of its pose (None without one) and its contrast."""

    code: np.ndarray
    desc: np.ndarray
    position: np.ndarray | None
    contrast: float | None


def check_keyframe(
    kf: Keyframe,
    *,
    known_ids: Container[int],
    last_stamp: float | None,
    dims: tuple[int, int] | None,
    geometric: str | None,
) -> CheckedKeyframe:
    """``kf`` checked against the detector's state: ids seen so far, the previous stamp, the (code
    bytes, descriptor dims) of the earlier keyframes, and the geometric verification method that
    needs an image (None when verification is off)."""
    if not isinstance(kf, Keyframe):
        raise TypeError(f"update() needs a Keyframe, got {type(kf).__name__}")
    kf_id = _check_id_and_stamp(kf, known_ids, last_stamp)
    desc = _unit_descriptor(kf_id, kf.desc)
    code = np.asarray(kf.code)
    if code.ndim != 1 or code.size == 0 or code.dtype != np.uint8:
        raise ValueError(
            f"keyframe {kf_id}: code must be a non-empty 1-D uint8 array, got "
            f"shape {code.shape} dtype {code.dtype}"
        )
    if dims is not None and dims != (code.size, desc.size):
        raise ValueError(
            f"keyframe {kf_id}: code/desc sizes ({code.size} bytes, {desc.size} dims) differ "
            f"from the earlier keyframes' ({dims[0]} bytes, {dims[1]} dims)"
        )
    position = _position(kf_id, kf.pose)
    _check_image_and_camera(kf, kf_id, geometric)
    return CheckedKeyframe(code.copy(), desc, position, _contrast(kf_id, kf.contrast))


def _check_id_and_stamp(kf: Keyframe, known_ids: Container[int], last_stamp: float | None) -> int:
    try:
        kf_id = int(kf.id)
    except (TypeError, ValueError):
        raise TypeError(f"Keyframe.id must be an integer, got {kf.id!r}") from None
    if kf_id in known_ids:
        raise ValueError(f"keyframe id {kf_id} was already added")
    stamp = float(kf.stamp)
    if not math.isfinite(stamp):
        raise ValueError(f"keyframe {kf_id}: stamp {kf.stamp!r} is not finite")
    if last_stamp is not None and stamp < last_stamp:
        raise ValueError(
            f"keyframe {kf_id}: stamp {stamp} is older than the previous keyframe's "
            f"{last_stamp}; keyframes must arrive in time order"
        )
    return kf_id


def _unit_descriptor(kf_id: int, value: np.ndarray) -> np.ndarray:
    desc = np.asarray(value)
    if desc.ndim != 1 or desc.size == 0 or not np.issubdtype(desc.dtype, np.floating):
        raise ValueError(
            f"keyframe {kf_id}: desc must be a non-empty 1-D float array, got "
            f"shape {desc.shape} dtype {desc.dtype}"
        )
    desc = desc.astype(np.float32)
    norm = float(np.linalg.norm(desc))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"keyframe {kf_id}: desc has NaN/inf values or is all zeros")
    return desc / norm


def _position(kf_id: int, value: np.ndarray | None) -> np.ndarray | None:
    if value is None:
        return None
    pose = np.asarray(value, dtype=np.float64)
    if pose.shape != (7,) or not np.isfinite(pose).all():
        raise ValueError(
            f"keyframe {kf_id}: pose must be 7 finite values (x y z qx qy qz qw), got "
            f"shape {pose.shape}"
        )
    return pose[:3]


def _check_image_and_camera(kf: Keyframe, kf_id: int, geometric: str | None) -> None:
    if geometric is not None and kf.image is None:
        raise ValueError(
            f"keyframe {kf_id} has no image, but LoopConfig.geometric="
            f"{geometric!r} needs one for every keyframe"
        )
    if kf.camera is not None and not isinstance(kf.camera, CameraModel):
        raise TypeError(f"keyframe {kf_id}: camera must be a CameraModel, got {type(kf.camera).__name__}")


def _contrast(kf_id: int, value: float | None) -> float | None:
    if value is None:
        return None
    contrast = float(value)
    if not 0.0 <= contrast <= 1.0:
        raise ValueError(f"keyframe {kf_id}: contrast must be in [0, 1] (image_contrast), got {value!r}")
    return contrast
