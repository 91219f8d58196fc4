"""Loop-closure detection over a stream of keyframes (see ``detector``), with optional two-view
geometric verification (see ``geometry``, also usable on its own) and the image contrast that keeps
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

__all__ = [
    "GATES",
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
