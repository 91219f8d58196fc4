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

Every keyframe leaves a ``LoopRecord`` saying what was found and which test rejected it. The settings
are in ``config``, the keyframe and its input checks in ``keyframe``, what is handed out in ``records``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Callable

import numpy as np

from vpr_core.loop.config import LoopConfig
from vpr_core.loop.geometry import Features, extract_features, verify_features
from vpr_core.loop.keyframe import Keyframe, check_keyframe
from vpr_core.loop.records import LoopCandidate, LoopRecord
from vpr_core.loop.relative_pose import RelativePose
from vpr_core.search import SearchConfig, TwoStageSearcher

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
        checked = check_keyframe(
            kf,
            known_ids=self._index_of,
            last_stamp=self._stamps[-1] if self._stamps else None,
            dims=self._dims,
            geometric=self.config.geometric if self._geometry is not None else None,
        )
        code, desc, position, contrast = checked.code, checked.desc, checked.position, checked.contrast
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
            candidate = self._reject_unmatched(record, "contrast")
        self._pending.append((index, code, desc, informative))
        self.records.append(record)
        return candidate

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
        """The tests after ``contrast``, in ``GATES`` order; the first that fails names the rejection.
        Up to ``departure`` a rejected query counts as no match for the consistency of later ones."""
        found = self._search(code, desc)
        if not found:
            return self._reject_unmatched(record, "recent")
        match, score = found[0]
        record.best_id, record.best_score = self._ids[match], score
        if score < self.config.min_score:
            return self._reject_unmatched(record, "score")
        if not self._passes_ratio(found, match, score, record):
            return self._reject_unmatched(record, "ratio")
        if not self._passes_departure(match, index, desc, score, record):
            return self._reject_unmatched(record, "departure")
        self._hits.append(match)
        record.consistent_count = self._consistent_count(match)
        if record.consistent_count < self.config.consistency_k:
            return self._reject(record, "consistency")
        if self._is_duplicate(index, match, score):
            return self._reject(record, "nms")
        if self._last_emit_stamp is not None and stamp - self._last_emit_stamp < self.config.min_interval_s:
            return self._reject(record, "rate")
        verified, inliers, relative = self._verify_geometry(features, match, record)
        if self._geometry is not None and not verified:
            return self._reject(record, "geometry")
        self._emitted.append((index, match, score))
        self._last_emit_stamp = stamp
        return LoopCandidate(
            query_id=self._ids[index],
            match_id=self._ids[match],
            match_stamp=self._stamps[match],
            score=score,
            consistent_count=record.consistent_count,
            verified=verified,
            inliers=inliers,
            relative=relative,
        )

    @staticmethod
    def _reject(record: LoopRecord, gate: str) -> None:
        record.rejected_by = gate

    def _reject_unmatched(self, record: LoopRecord, gate: str) -> None:
        """A rejection before the consistency test: this query also counts as no match there."""
        self._hits.append(None)
        record.rejected_by = gate

    def _search(self, code: np.ndarray, desc: np.ndarray) -> list[tuple[int, float]]:
        """(keyframe index, cosine) of the nearest searchable keyframes, best first."""
        if self._searcher is None:
            return []
        # 2 * neighbourhood + 2 results always include one outside the best one's neighbourhood
        # (which holds at most 2 * neighbourhood + 1 keyframes) whenever such a keyframe exists.
        k = min(2 * self.config.neighbourhood + 2, len(self._rows))
        result = self._searcher.search(code[None], desc[None], k)
        return [(self._rows[int(i)], float(s)) for i, s in zip(result.ids[0], result.scores[0]) if i >= 0]

    def _passes_ratio(self, found: list[tuple[int, float]], match: int, score: float, record: LoopRecord) -> bool:
        cfg = self.config
        outside = next(((i, s) for i, s in found if abs(i - match) > cfg.neighbourhood), None)
        if outside is None:
            return True
        record.outside_id, record.outside_score = self._ids[outside[0]], outside[1]
        d_best, d_out = _distance(score), _distance(outside[1])
        record.distance_ratio = d_best / d_out if d_out > 0 else math.inf
        return d_best < cfg.ratio_max * d_out

    def _passes_departure(self, match: int, index: int, desc: np.ndarray, score: float, record: LoopRecord) -> bool:
        if self.config.min_departure <= 0:
            return True
        record.departure = self._departure(match, index, desc, score)
        return record.departure is not None and record.departure >= self.config.min_departure

    def _consistent_count(self, match: int) -> int:
        window = self.config.consistency_window
        return sum(1 for m in self._hits if m is not None and abs(m - match) <= window)

    def _is_duplicate(self, index: int, match: int, score: float) -> bool:
        """Whether a loop emitted within ``neighbourhood`` queries matched near ``match`` at least as well."""
        cfg = self.config
        while self._emitted and index - self._emitted[0][0] > cfg.neighbourhood:
            self._emitted.popleft()
        return any(abs(m - match) <= cfg.nms_radius and score <= s for _, m, s in self._emitted)

    def _verify_geometry(
        self, features: Features | None, match: int, record: LoopRecord
    ) -> tuple[bool | None, int, RelativePose | None]:
        """(verified, inliers, relative pose) of the two images; (None, 0, None) when verification is off."""
        if self._geometry is None:
            return None, 0, None
        geo = verify_features(features, self._features[match], self._geometry)
        record.inliers = geo.inliers
        return geo.verified, geo.inliers, geo.relative

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
