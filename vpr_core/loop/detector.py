"""Loop-closure detection over a stream of keyframes.

A SLAM back end that accepts one wrong loop closure can bend its whole map, so the detector is built
to say "no" unless several independent tests agree. Each keyframe is checked, cheapest test first:

1. ``contrast``    a keyframe whose image shows next to nothing (``min_contrast``, see
                   ``vpr_core.loop.contrast``) neither looks for a loop nor is ever found as one;
2. ``recent``      only keyframes far enough in the past (by count, seconds and travelled distance)
                   are searched, so the robot's immediate past never counts as a revisit;
3. ``score``       the best cosine similarity must reach ``min_score``;
4. ``ratio``       perceptual-aliasing guard: the best match must be clearly better than the best
                   match outside its own neighbourhood (a corridor that looks like every other
                   corridor has no clear winner);
5. ``departure``   the robot must have left the matched place before coming back: some keyframe
                   between the match and the query must look clearly less like the query than the
                   match does (a robot that stands still, or crawls, past the recent-past window
                   otherwise "closes a loop" with its own immediate past when it has no poses);
6. ``consistency`` k of the last n queries must have matched old keyframes within +-w of this match;
7. ``nms``         a candidate no better than a loop emitted just before to (nearly) the same old
                   keyframe is a duplicate of it;
8. ``rate``        at most one loop per ``min_interval_s`` of keyframe time;
9. ``geometry``    optional two-view geometric verification of the two images.

Every keyframe leaves a ``LoopRecord`` saying what was found and which test rejected it.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vpr_core.loop.geometry import Features, GeometryConfig, extract_features, verify_features
from vpr_core.loop.relative_pose import CameraModel, RelativePose
from vpr_core.search import SearchConfig, TwoStageSearcher

__all__ = ["GATES", "Keyframe", "LoopCandidate", "LoopConfig", "LoopDetector", "LoopRecord"]

# The tests in the order they run; a record's ``rejected_by`` is one of these or None (accepted).
GATES = ("contrast", "recent", "score", "ratio", "departure", "consistency", "nms", "rate", "geometry")
GEOMETRIC_METHODS = ("none", "orb", "sift")


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
    and min_departure are chosen on the Nordland-tiny development section; min_score on its
    validation slice, for the shipped heads (README, "Loop closure").
    """

    min_contrast: float = 0.03
    exclude_recent_frames: int = 20
    exclude_recent_seconds: float = 10.0
    exclude_recent_distance_m: float = 2.0
    min_score: float = 0.65
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


_DEPARTURE_BLOCK = 256  # keyframes per matrix product of the departure test


def _distance(cosine: float) -> float:
    return math.sqrt(max(0.0, 2.0 - 2.0 * cosine))


class LoopDetector:
    """Feed keyframes in time order with ``update``; each returns a loop candidate or None.

    Keyframes wait in a queue until they are old enough to be searched and are then added to a
    ``TwoStageSearcher`` that grows one keyframe at a time. Because stamps, keyframe counts and path
    length only grow, a keyframe that is old enough once stays old enough, so the searcher only ever
    holds searchable keyframes and no result has to be thrown away after the search. Every
    keyframe's unit descriptor is also kept for the departure test (4 bytes per dimension).
    """

    def __init__(
        self,
        config: LoopConfig | None = None,
        *,
        searcher_factory: Callable[[np.ndarray, np.ndarray, SearchConfig], TwoStageSearcher] | None = None,
    ) -> None:
        """``searcher_factory(codes, desc, search_config)`` builds the searcher on the first
        searchable keyframes (default ``TwoStageSearcher``); an evaluation that replays one sequence
        many times passes one that answers repeated searches from memory."""
        self.config = config if config is not None else LoopConfig()
        self._searcher_factory = searcher_factory or TwoStageSearcher
        self._geometry = self.config.geometry_config() if self.config.geometric != "none" else None
        # A node resets from its service callback while its worker thread may be in update().
        self._lock = threading.Lock()
        self._clear()

    def reset(self) -> None:
        """Forget every keyframe, as after a new map is started."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._ids: list[int] = []
        self._index_of: dict[int, int] = {}
        self._stamps: list[float] = []
        self._path: list[float] = []  # travelled distance from the first keyframe, metres
        self._last_position: np.ndarray | None = None
        self._features: list[Features | None] = []
        self._descs: list[np.ndarray] = []
        self._informative: list[bool] = []
        self._pending: deque[tuple[int, np.ndarray, np.ndarray, bool]] = deque()
        self._searcher: TwoStageSearcher | None = None
        self._rows: list[int] = []  # keyframe index of each searcher row (low-contrast keyframes have none)
        self._dims: tuple[int, int] | None = None  # (code bytes, descriptor dims)
        self._hits: deque[int | None] = deque(maxlen=self.config.consistency_n)
        self._emitted: deque[tuple[int, int, float]] = deque()  # (query index, match index, score)
        self._last_emit_stamp: float | None = None
        self.records: deque[LoopRecord] = deque(maxlen=self.config.max_records)

    @property
    def last_record(self) -> LoopRecord | None:
        return self.records[-1] if self.records else None

    def __len__(self) -> int:
        return len(self._ids)

    def update(self, kf: Keyframe) -> LoopCandidate | None:
        """Add ``kf`` and look for an older keyframe that closes a loop with it.

        Bad input raises ValueError/TypeError and leaves the detector exactly as it was.
        """
        with self._lock:
            return self._update(kf)

    def _update(self, kf: Keyframe) -> LoopCandidate | None:
        code, desc, position, contrast = self._validate(kf)
        features = (
            extract_features(kf.image, self._geometry, camera=kf.camera, depth_image=kf.depth)
            if self._geometry
            else None
        )
        stamp = float(kf.stamp)

        index = len(self._ids)
        self._dims = (code.size, desc.size)
        self._ids.append(int(kf.id))
        self._index_of[int(kf.id)] = index
        self._stamps.append(stamp)
        if position is not None:
            step = 0.0 if self._last_position is None else float(np.linalg.norm(position - self._last_position))
            self._last_position = position
        else:
            step = 0.0  # motion without poses is counted when the next pose arrives
        self._path.append((self._path[-1] if self._path else 0.0) + step)
        self._features.append(features)
        informative = contrast is None or contrast >= self.config.min_contrast
        self._descs.append(desc)
        self._informative.append(informative)
        self._release_old_keyframes(index, stamp, has_pose=position is not None)

        record = LoopRecord(keyframe_id=int(kf.id), stamp=stamp, searchable=len(self._rows), contrast=contrast)
        if informative:
            candidate = self._decide(index, stamp, code, desc, features, record)
        else:
            self._hits.append(None)
            record.rejected_by, candidate = "contrast", None
        self._pending.append((index, code, desc, informative))
        self.records.append(record)
        return candidate

    def _validate(self, kf: Keyframe) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float | None]:
        if not isinstance(kf, Keyframe):
            raise TypeError(f"update() needs a Keyframe, got {type(kf).__name__}")
        try:
            kf_id = int(kf.id)
        except (TypeError, ValueError):
            raise TypeError(f"Keyframe.id must be an integer, got {kf.id!r}") from None
        if kf_id in self._index_of:
            raise ValueError(f"keyframe id {kf_id} was already added")
        stamp = float(kf.stamp)
        if not math.isfinite(stamp):
            raise ValueError(f"keyframe {kf_id}: stamp {kf.stamp!r} is not finite")
        if self._stamps and stamp < self._stamps[-1]:
            raise ValueError(
                f"keyframe {kf_id}: stamp {stamp} is older than the previous keyframe's "
                f"{self._stamps[-1]}; keyframes must arrive in time order"
            )
        desc = np.asarray(kf.desc)
        if desc.ndim != 1 or desc.size == 0 or not np.issubdtype(desc.dtype, np.floating):
            raise ValueError(
                f"keyframe {kf_id}: desc must be a non-empty 1-D float array, got "
                f"shape {desc.shape} dtype {desc.dtype}"
            )
        desc = desc.astype(np.float32)
        norm = float(np.linalg.norm(desc))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError(f"keyframe {kf_id}: desc has NaN/inf values or is all zeros")
        code = np.asarray(kf.code)
        if code.ndim != 1 or code.size == 0 or code.dtype != np.uint8:
            raise ValueError(
                f"keyframe {kf_id}: code must be a non-empty 1-D uint8 array, got "
                f"shape {code.shape} dtype {code.dtype}"
            )
        if self._dims is not None and self._dims != (code.size, desc.size):
            raise ValueError(
                f"keyframe {kf_id}: code/desc sizes ({code.size} bytes, {desc.size} dims) differ "
                f"from the earlier keyframes' ({self._dims[0]} bytes, {self._dims[1]} dims)"
            )
        position = None
        if kf.pose is not None:
            pose = np.asarray(kf.pose, dtype=np.float64)
            if pose.shape != (7,) or not np.isfinite(pose).all():
                raise ValueError(
                    f"keyframe {kf_id}: pose must be 7 finite values (x y z qx qy qz qw), got "
                    f"shape {pose.shape}"
                )
            position = pose[:3]
        if self._geometry is not None and kf.image is None:
            raise ValueError(
                f"keyframe {kf_id} has no image, but LoopConfig.geometric="
                f"{self.config.geometric!r} needs one for every keyframe"
            )
        if kf.camera is not None and not isinstance(kf.camera, CameraModel):
            raise TypeError(f"keyframe {kf_id}: camera must be a CameraModel, got {type(kf.camera).__name__}")
        contrast = None
        if kf.contrast is not None:
            contrast = float(kf.contrast)
            if not 0.0 <= contrast <= 1.0:
                raise ValueError(f"keyframe {kf_id}: contrast must be in [0, 1] (image_contrast), got {kf.contrast!r}")
        return code.copy(), desc / norm, position, contrast

    def _release_old_keyframes(self, index: int, stamp: float, has_pose: bool) -> None:
        """Move the keyframes that are now old enough from the queue into the searcher."""
        cfg = self.config
        released = []
        while self._pending:
            j = self._pending[0][0]
            if index - j <= cfg.exclude_recent_frames:
                break
            if stamp - self._stamps[j] < cfg.exclude_recent_seconds:
                break
            if has_pose and self._path[index] - self._path[j] < cfg.exclude_recent_distance_m:
                break
            entry = self._pending.popleft()
            if entry[3]:   # low-contrast keyframes are never searched
                released.append(entry)
        if not released:
            return
        codes = np.stack([c for _, c, _, _ in released])
        descs = np.stack([d for _, _, d, _ in released])
        if self._searcher is None:
            self._searcher = self._searcher_factory(codes, descs, cfg.search)
        else:
            self._searcher.add(codes, descs)
        self._rows.extend(j for j, _, _, _ in released)

    def _decide(
        self,
        index: int,
        stamp: float,
        code: np.ndarray,
        desc: np.ndarray,
        features: Features | None,
        record: LoopRecord,
    ) -> LoopCandidate | None:
        cfg = self.config
        if self._searcher is None:
            self._hits.append(None)
            record.rejected_by = "recent"
            return None

        # 2 * neighbourhood + 2 results always include one outside the best one's neighbourhood
        # (which holds at most 2 * neighbourhood + 1 keyframes) whenever such a keyframe exists.
        k = min(2 * cfg.neighbourhood + 2, len(self._rows))
        result = self._searcher.search(code[None], desc[None], k)
        found = [(self._rows[int(i)], float(s)) for i, s in zip(result.ids[0], result.scores[0]) if i >= 0]
        if not found:
            self._hits.append(None)
            record.rejected_by = "recent"
            return None
        match, score = found[0]
        record.best_id, record.best_score = self._ids[match], score
        if score < cfg.min_score:
            self._hits.append(None)
            record.rejected_by = "score"
            return None

        outside = next(((i, s) for i, s in found if abs(i - match) > cfg.neighbourhood), None)
        if outside is not None:
            record.outside_id, record.outside_score = self._ids[outside[0]], outside[1]
            d_best, d_out = _distance(score), _distance(outside[1])
            record.distance_ratio = d_best / d_out if d_out > 0 else math.inf
            if not d_best < cfg.ratio_max * d_out:
                self._hits.append(None)
                record.rejected_by = "ratio"
                return None

        if cfg.min_departure > 0:
            record.departure = self._departure(match, index, desc, score)
            if record.departure is None or record.departure < cfg.min_departure:
                self._hits.append(None)
                record.rejected_by = "departure"
                return None

        self._hits.append(match)
        consistent = sum(
            1 for m in self._hits if m is not None and abs(m - match) <= cfg.consistency_window
        )
        record.consistent_count = consistent
        if consistent < cfg.consistency_k:
            record.rejected_by = "consistency"
            return None

        while self._emitted and index - self._emitted[0][0] > cfg.neighbourhood:
            self._emitted.popleft()
        if any(abs(m - match) <= cfg.nms_radius and score <= s for _, m, s in self._emitted):
            record.rejected_by = "nms"
            return None

        if self._last_emit_stamp is not None and stamp - self._last_emit_stamp < cfg.min_interval_s:
            record.rejected_by = "rate"
            return None

        verified, inliers, relative = None, 0, None
        if self._geometry is not None:
            geo = verify_features(features, self._features[match], self._geometry)
            verified, inliers, relative = geo.verified, geo.inliers, geo.relative
            record.inliers = inliers
            if not verified:
                record.rejected_by = "geometry"
                return None

        self._emitted.append((index, match, score))
        self._last_emit_stamp = stamp
        return LoopCandidate(
            query_id=self._ids[index],
            match_id=self._ids[match],
            match_stamp=self._stamps[match],
            score=score,
            consistent_count=consistent,
            verified=verified,
            inliers=inliers,
            relative=relative,
        )

    def _departure(self, match: int, index: int, desc: np.ndarray, score: float) -> float | None:
        """``score`` minus the lowest cosine of the query with an informative keyframe strictly
        between ``match`` and ``index`` (None when there is none), scanned forward from the match in
        blocks and stopped once ``min_departure`` is reached: a robot that left usually shows it
        within the first keyframes after the match, so a long map costs a block, not a full pass."""
        lowest = None
        for start in range(match + 1, index, _DEPARTURE_BLOCK):
            stop = min(start + _DEPARTURE_BLOCK, index)
            rows = [j for j in range(start, stop) if self._informative[j]]
            if not rows:
                continue
            low = float(np.min(np.stack([self._descs[j] for j in rows]) @ desc))
            lowest = low if lowest is None else min(lowest, low)
            if score - lowest >= self.config.min_departure:
                break
        return None if lowest is None else score - lowest
