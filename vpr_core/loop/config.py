"""Settings of the loop-closure detector, and the names of its tests (see ``detector``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vpr_core.choices import GEOMETRIC_METHODS
from vpr_core.loop.geometry import GeometryConfig
from vpr_core.search import SearchConfig

# The tests in the order they run; a record's ``rejected_by`` is one of these or None (accepted).
GATES = ("contrast", "recent", "score", "ratio", "departure", "consistency", "nms", "rate", "geometry")


@dataclass
class LoopConfig:
    """Settings of the loop-closure detector.

    Exclusion of the recent past: a keyframe is searchable only once it is more than
    ``exclude_recent_frames`` keyframes, at least ``exclude_recent_seconds`` of stamp time and (when
    the current keyframe has a pose) at least ``exclude_recent_distance_m`` of travelled path length
    older than the query. Path length, not straight-line distance, because a true loop is exactly a
    place that is near in space but far along the path.

    Aliasing guard (``ratio_max``): with s1 the best cosine and s_out the best cosine of a keyframe
    more than ``neighbourhood`` keyframes away from the best one, the match is kept only if
    ``d(s1) < ratio_max * d(s_out)``, where ``d(s) = sqrt(2 - 2 s)`` is the Euclidean distance
    between the unit descriptors (Lowe's ratio test on global descriptors). It passes when no
    searchable keyframe lies outside the neighbourhood; 1.0 rejects only exact ties.

    Departure (``min_departure``): with s the match's cosine and s_min the lowest cosine between the
    query and an informative keyframe after the match (and before the query), the match is kept only
    if ``s - s_min >= min_departure``; without any such keyframe it is rejected. On a true revisit the
    keyframes in between show other places (s - s_min of 0.44 or more on every true closure of the
    Nordland-tiny development section), while a train held at a station or crawling for longer than
    the recent-past window sees the same scene throughout (0.29 or less). 0 disables it.

    Temporal consistency: the current match at old keyframe m counts the queries among the last
    ``consistency_n`` (this one included) whose own match passed the score and ratio tests and lies
    within ``consistency_window`` keyframes of m; at least ``consistency_k`` are needed. k = 1
    disables the test.

    Non-maximum suppression: a candidate is a duplicate, and dropped, when a loop emitted at most
    ``neighbourhood`` queries earlier matched within ``nms_radius`` keyframes of the same old
    keyframe with at least the same score. Within one query only the best match is ever returned
    (its neighbours are the same place), so with the default ``nms_radius`` = 0 a revisit yields one
    loop per old keyframe: a robot that lingers, or drives slower than the first time, does not close
    the same loop again and again, while a revisit at the same pace still closes at every keyframe.
    A larger radius thins the loops along a revisit further.

    Rate limit: ``min_interval_s`` of keyframe stamp time between emitted loops (0 disables).

    Contrast: a keyframe whose ``Keyframe.contrast`` is below ``min_contrast`` is rejected as a query
    and kept out of the searched keyframes; keyframes of unknown contrast (None) pass. 0 disables it.

    Geometric verification (``geometric`` = "orb" or "sift"; "none" skips it, and keyframes then need
    no image): see ``vpr_core.loop.geometry``. When the keyframes have a camera model
    (``Keyframe.camera``, else ``intrinsics`` = fx, fy, cx, cy of the keyframe images) the candidate
    carries the relative pose T_match_query (``LoopCandidate.relative``), metric when a keyframe
    has a registered depth image.

    Defaults: the recent-past exclusion, min_score, min_departure, consistency and min_inliers equal
    the node's parameter file (``config/localize.yaml``). min_contrast (above the black tunnel frames)
    and min_departure are chosen on the Nordland-tiny development section, min_score on the same
    section for the default model, checkpoints/lite0-fused (README, "Loop closure").
    """

    min_contrast: float = 0.03
    exclude_recent_frames: int = 20
    exclude_recent_seconds: float = 10.0
    exclude_recent_distance_m: float = 2.0
    min_score: float = 0.83
    ratio_max: float = 0.9
    min_departure: float = 0.35
    neighbourhood: int = 3
    consistency_k: int = 2
    consistency_n: int = 3
    consistency_window: int = 3
    nms_radius: int = 0
    geometric: str = "none"
    min_inliers: int = 30
    ratio_test: float = 0.8
    max_features: int = 1000
    intrinsics: tuple[float, float, float, float] | None = None
    min_interval_s: float = 0.0
    max_records: int = 100_000
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"LoopConfig.{name}={getattr(self, name)!r}: {rule}")

        check(0.0 <= self.min_contrast <= 1.0, "min_contrast", "an RMS contrast must be in [0, 1]")
        check(self.exclude_recent_frames >= 0, "exclude_recent_frames", "must be >= 0")
        check(self.exclude_recent_seconds >= 0, "exclude_recent_seconds", "must be >= 0")
        check(self.exclude_recent_distance_m >= 0, "exclude_recent_distance_m", "must be >= 0")
        check(-1.0 <= self.min_score <= 1.0, "min_score", "a cosine threshold must be in [-1, 1]")
        check(0.0 < self.ratio_max <= 1.0, "ratio_max", "must be in (0, 1]")
        check(0.0 <= self.min_departure <= 2.0, "min_departure", "a difference of cosines must be in [0, 2]")
        check(self.neighbourhood >= 0, "neighbourhood", "must be >= 0")
        check(self.consistency_n >= 1, "consistency_n", "must be >= 1")
        check(
            1 <= self.consistency_k <= self.consistency_n,
            "consistency_k",
            f"must be between 1 and consistency_n={self.consistency_n}",
        )
        check(self.consistency_window >= 0, "consistency_window", "must be >= 0")
        check(self.nms_radius >= 0, "nms_radius", "must be >= 0")
        check(self.geometric in GEOMETRIC_METHODS, "geometric", f"must be one of {GEOMETRIC_METHODS}")
        check(self.min_interval_s >= 0, "min_interval_s", "must be >= 0")
        check(self.max_records >= 1, "max_records", "must be >= 1")
        if self.geometric != "none":
            self.geometry_config()  # validates min_inliers, ratio_test, max_features, intrinsics

    def geometry_config(self) -> GeometryConfig:
        return GeometryConfig(
            method=self.geometric,
            max_features=self.max_features,
            ratio_test=self.ratio_test,
            min_inliers=self.min_inliers,
            intrinsics=self.intrinsics,
        )
