"""Per-frame evaluation of the sequence filter against single-frame two-stage retrieval.

Every frame counts, the filter's warm-up included: a node answers from the first frame, so the
Recall@1 here is the share of frames whose published best place is correct. Also measured: precision
and share of accepted frames at the accept threshold, frames needed to converge after a start, and
frames needed to recover after a kidnapping (a jump in the query sequence), over several start and
jump points (medians), and R@1 on a query order that stops, reverses and skips.

The filter runs over the cached per-query searches of ``sequence_data`` (a query's search does not
depend on the order), with the same ``SequenceFilter`` the node's ``Localizer`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr_core.acceptance import AcceptanceConfig, margin_of
from vpr_core.sequence_filter import SequenceFilter, SequenceFilterConfig
from vpr_core.sequence_smoothing import smooth_route


@dataclass
class RouteSearch:
    """Per query (in the data set's order): top-``k`` two-stage ids and scores, the frame's
    contrast, and its positives; plus the map size."""

    name: str
    map_size: int
    ids: np.ndarray  # int64 [Q, k], best first, -1 past the results
    scores: np.ndarray  # float32 [Q, k]
    contrast: np.ndarray  # float32 [Q]
    positives: list[np.ndarray]

    def correct(self, query: int, place: int) -> bool:
        return bool(np.isin(place, self.positives[query]))


STABLE_FRAMES = 5  # a (re-)localization counts from the first of this many correct frames in a row
TRIALS = 8  # start points and kidnappings per sequence (medians reported)
TRIAL_FRAMES = 60  # frames run after each start or jump


@dataclass
class FrameAnswers:
    """Per frame of an order: best place and whether it is correct and accepted."""

    place: np.ndarray
    correct: np.ndarray
    accepted: np.ndarray


def single_frame(route: RouteSearch, order: np.ndarray, config: AcceptanceConfig) -> FrameAnswers:
    """The node's answers without the filter: the best two-stage match, accepted by the score,
    margin and contrast tests of ``Localizer``."""
    place = route.ids[order, 0]
    accepted = np.zeros(len(order), bool)
    searched = config.top_k + 2 * config.distinct_places + 1  # what Localizer asks the search for
    for n, q in enumerate(order):
        ids, scores = route.ids[q, :searched], route.scores[q, :searched]
        margin = margin_of(ids, scores, config)
        accepted[n] = (route.contrast[q] >= config.min_contrast and scores[0] >= config.min_score
                       and (margin is None or margin >= config.min_margin))
    return FrameAnswers(place, correct_places(route, order, place), accepted)


def filtered(route: RouteSearch, order: np.ndarray, config: SequenceFilterConfig,
             min_contrast: float = AcceptanceConfig.min_contrast) -> FrameAnswers:
    """The filter's answers over the queries in ``order``, one motion step per frame."""
    f = SequenceFilter(config, route.map_size)
    place = np.empty(len(order), np.int64)
    probability = np.empty(len(order))
    for n, q in enumerate(order):
        estimate = f.update(route.ids[q], route.scores[q], observe=bool(route.contrast[q] >= min_contrast))
        place[n], probability[n] = estimate.place_id, estimate.probability
    accepted = (probability >= config.min_probability) & (route.contrast[order] >= min_contrast)
    return FrameAnswers(place, correct_places(route, order, place), accepted)


def smoothed(route: RouteSearch, config: SequenceFilterConfig,
             min_contrast: float = AcceptanceConfig.min_contrast) -> FrameAnswers:
    """Offline smoothing's answers over the queries in order (vpr_core/sequence_smoothing.py): each
    frame's place from the whole route; accepted = not blank (it has no probability threshold)."""
    order = np.arange(len(route.ids))
    observe = route.contrast >= min_contrast
    place = smooth_route(route.ids, route.scores, config, route.map_size, observe)
    return FrameAnswers(place, correct_places(route, order, place), observe)


def correct_places(route: RouteSearch, order: np.ndarray, place: np.ndarray) -> np.ndarray:
    """Per frame of ``order``: whether ``place`` is one of its positives."""
    return np.array([route.correct(q, p) for q, p in zip(order, place)], dtype=bool)


def recall_at_1(answers: FrameAnswers, route: RouteSearch, order: np.ndarray) -> float:
    """Share of frames (with a true place in the map) whose best place is correct."""
    has = np.array([route.positives[q].size > 0 for q in order])
    return float(answers.correct[has].mean()) if has.any() else float("nan")


def precision(answers: FrameAnswers) -> tuple[float, float]:
    """Precision of the accepted frames and the share of frames accepted."""
    n = int(answers.accepted.sum())
    return (float(answers.correct[answers.accepted].mean()) if n else float("nan"),
            n / max(len(answers.accepted), 1))


def frames_to_stable(correct: np.ndarray) -> int | None:
    """Frames until the answer is correct for ``STABLE_FRAMES`` frames in a row (1 = at once);
    None when it never is."""
    run = 0
    for n, ok in enumerate(correct):
        run = run + 1 if ok else 0
        if run == STABLE_FRAMES:
            return n - STABLE_FRAMES + 2
    return None


def convergence(route: RouteSearch, config: SequenceFilterConfig) -> list[int | None]:
    """Frames to localize after a cold start, at ``TRIALS`` start points spread over the route."""
    n = len(route.ids)
    starts = np.linspace(0, max(n - TRIAL_FRAMES, 0), TRIALS).astype(int)
    out = []
    for s in starts:
        order = np.arange(s, min(s + TRIAL_FRAMES, n))
        out.append(frames_to_stable(filtered(route, order, config).correct))
    return out


def kidnapping(route: RouteSearch, config: SequenceFilterConfig) -> list[int | None]:
    """Frames to re-localize after a jump: ``TRIAL_FRAMES`` frames from one point of the route, then
    on from a point half the route away (a kidnapped robot), at ``TRIALS`` pairs of points."""
    n = len(route.ids)
    half = n // 2
    out = []
    for s in np.linspace(0, max(half - TRIAL_FRAMES, 0), TRIALS).astype(int):
        before = np.arange(s, min(s + TRIAL_FRAMES, n))
        jump = (s + half) % n
        after = np.arange(jump, min(jump + TRIAL_FRAMES, n))
        answers = filtered(route, np.concatenate([before, after]), config)
        out.append(frames_to_stable(answers.correct[len(before):]))
    return out


def irregular_order(n: int) -> np.ndarray:
    """The queries as a robot that stops, reverses and skips would see them: repeated blocks of
    20 frames forward, a stop (the last frame 8 times), 10 frames back, 30 frames forward every
    second frame, 10 forward again; deterministic, covering the whole route."""
    order, at = [], 0
    while at < n - 1:
        forward = list(range(at, min(at + 20, n)))
        at = forward[-1]
        back = list(range(at - 1, max(at - 11, -1), -1))
        at = back[-1] if back else at
        skip = list(range(at + 2, min(at + 62, n), 2))
        at = skip[-1] if skip else at
        tail = list(range(at + 1, min(at + 11, n)))
        at = tail[-1] if tail else n
        order += forward + [forward[-1]] * 8 + back + skip + tail
    return np.asarray(order, dtype=np.int64)


def median_frames(values: list[int | None]) -> str:
    """Median of the trials, and how many never (re-)localized within ``TRIAL_FRAMES`` frames."""
    done = [v for v in values if v is not None]
    text = f"{np.median(done):.0f}" if done else "-"
    return text + (f" ({len(values) - len(done)}/{len(values)} never)" if len(done) < len(values) else "")
