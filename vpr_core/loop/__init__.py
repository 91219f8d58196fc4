"""Loop-closure detection over a stream of keyframes (see ``detector``), with optional two-view
geometric verification (see ``geometry``, also usable on its own), the relative pose of a closure
with its covariance (see ``relative_pose``) and the image contrast that keeps
frames showing next to nothing out (see ``contrast``)."""

from vpr_core.loop.contrast import image_contrast
from vpr_core.loop.detector import (
    GATES,
    Keyframe,
    LoopCandidate,
    LoopConfig,
    LoopDetector,
    LoopRecord,
)
from vpr_core.loop.geometry import (
    Features,
    GeometryConfig,
    GeometryResult,
    extract_features,
    verify_features,
    verify_pair,
)
from vpr_core.loop.relative_pose import (
    METRIC,
    NONE,
    ROTATION_ONLY,
    UNOBSERVED_VARIANCE,
    UP_TO_SCALE,
    CameraModel,
    RelativePose,
    RelativePoseConfig,
    estimate_relative_pose,
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
