"""Loop-closure detection over a stream of keyframes (see ``detector``), with optional two-view
geometric verification (see ``geometry``, also usable on its own)."""

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
    "verify_features",
    "verify_pair",
]
