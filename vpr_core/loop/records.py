"""What the loop-closure detector hands out: a loop candidate, and a record of every decision."""

from __future__ import annotations

from dataclasses import dataclass

from vpr_core.loop.relative_pose import RelativePose


@dataclass
class LoopCandidate:
    """A loop closure from ``query_id`` (the new keyframe) to the older ``match_id``.

    ``relative`` is T_match_query, the pose of the query keyframe's camera in the matched keyframe's
    camera frame: X_match = relative.rotation @ X_query + relative.translation (OpenCV optical
    frames), with its kind (METRIC, UP_TO_SCALE, ROTATION_ONLY) and 6x6 covariance in the match
    camera's frame; see ``vpr_core.loop.relative_pose``. It is None without cameras or without
    geometric verification. ``verified`` is None when geometric verification is off.
    """

    query_id: int
    match_id: int
    match_stamp: float
    score: float
    consistent_count: int
    verified: bool | None
    inliers: int
    relative: RelativePose | None = None


@dataclass
class LoopRecord:
    """What the detector saw and decided for one keyframe (None where a test was not reached)."""

    keyframe_id: int
    stamp: float
    searchable: int
    contrast: float | None = None
    best_id: int | None = None
    best_score: float | None = None
    outside_id: int | None = None
    outside_score: float | None = None
    distance_ratio: float | None = None
    departure: float | None = None
    consistent_count: int | None = None
    inliers: int | None = None
    rejected_by: str | None = None
