"""Loop-closure detection over a stream of keyframes (see ``detector``; its settings in ``config``),
with optional two-view geometric verification (see ``geometry``, also usable on its own), the
relative pose of a closure with its covariance (kinds and convention in ``relative_pose``, the
estimation in ``pose_estimation``) and the image contrast that keeps frames showing next to
nothing out (see ``contrast``)."""

from vpr_core.loop.camera_model import CameraModel
from vpr_core.loop.config import GATES, LoopConfig
from vpr_core.loop.contrast import image_contrast
from vpr_core.loop.detector import LoopDetector
from vpr_core.loop.geometry import (
    Features,
    GeometryConfig,
    GeometryResult,
    extract_features,
    verify_features,
    verify_pair,
)
from vpr_core.loop.keyframe import Keyframe
from vpr_core.loop.pose_estimation import estimate_relative_pose
from vpr_core.loop.records import LoopCandidate, LoopRecord
from vpr_core.loop.relative_pose import (
    METRIC,
    NONE,
    ROTATION_ONLY,
    UNOBSERVED_VARIANCE,
    UP_TO_SCALE,
    RelativePose,
    RelativePoseConfig,
)

__all__ = [
    "GATES",
    "METRIC",
    "NONE",
    "ROTATION_ONLY",
    "UNOBSERVED_VARIANCE",
    "UP_TO_SCALE",
    "CameraModel",
    "RelativePose",
    "RelativePoseConfig",
    "estimate_relative_pose",
    "Features",
    "GeometryConfig",
    "GeometryResult",
    "Keyframe",
    "LoopCandidate",
    "LoopConfig",
    "LoopDetector",
    "LoopRecord",
    "extract_features",
    "image_contrast",
    "verify_features",
    "verify_pair",
]
