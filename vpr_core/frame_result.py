"""What the localization pipeline concluded about one frame, as the node, replay and demo report it."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpr_core.data.frame import Frame
from vpr_core.localization_pose import PoseEstimate
from vpr_core.loop import LoopCandidate
from vpr_core.mapdb import PlaceRecord


@dataclass
class Match:
    place_id: int
    score: float
    hamming: int
    record: PlaceRecord


@dataclass
class FrameResult:
    """What the pipeline concluded about one frame."""

    frame: Frame
    matches: list[Match]
    accepted: bool
    keyframe_id: int | None = None
    loop: LoopCandidate | None = None
    encode_ms: float = 0.0
    search_ms: float = 0.0
    local_pool: int = 0  # candidates the local stage re-ranked (0: stage off or skipped)
    contrast: float | None = None  # RMS contrast of the frame (vpr_core.loop.contrast)
    # best score minus the best score at a distinct place (None: no distinct place among the results)
    margin: float | None = None
    pose: PoseEstimate | None = None  # the base's pose in the map frame, for accepted matches with a pose
    # With the sequence filter on: matches[0] is the filter's best place, `probability` its posterior
    # mass (within filter.confidence_radius places), `raw_matches` the frame's own retrieval.
    filtered: bool = False
    probability: float | None = None
    raw_matches: list[Match] = field(default_factory=list)
    session_id: str = ""  # slam session of keyframe_id and of the loop's query keyframe
    loop_match_frame: str = ""  # camera frame of the loop's matched keyframe
