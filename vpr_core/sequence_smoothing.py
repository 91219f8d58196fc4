"""Offline smoothing of a whole recorded route: every frame's place from all frames, before and after.

Why: a node must answer each frame from the past alone (vpr_core/sequence_filter.py), but an offline
job (evaluating a recording, labelling a bag before building a map from it) may also use the frames
that come later: the start of a route, before the causal filter has locked on, then gets the
evidence of the whole route. This is the two-filter smoother (Fraser and Potter 1969): the causal
filter run forwards gives p(state | frames <= t), the same filter run over the reversed route gives
p(state | frames > t) after its motion step to t, and their product (a uniform prior over states)
is p(state | all frames). Running the route backwards reverses every speed, so the backward
filter's speed v meets the forward filter's -v.

Never used by the node: it looks ahead by construction. Results are reported apart from the
causal filter's.
"""

from __future__ import annotations

import numpy as np

from vpr_core.sequence_filter import SequenceFilter, SequenceFilterConfig


def smooth_route(ids: np.ndarray, scores: np.ndarray, config: SequenceFilterConfig, map_size: int,
                 observe: np.ndarray | None = None) -> np.ndarray:
    """The most probable place of every frame given the whole route: ``ids`` / ``scores`` [T, K]
    are the frames' top-K search results in route order (best first, -1 past the results),
    ``observe`` [T] False for frames that carry no evidence (blank). One motion step per frame."""
    ids, scores = np.asarray(ids), np.asarray(scores)
    frames = len(ids)
    observe = np.ones(frames, bool) if observe is None else np.asarray(observe, bool)
    forward, backward = SequenceFilter(config, map_size), SequenceFilter(config, map_size)
    ahead: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = [None] * frames  # type: ignore[list-item]
    for t in range(frames - 1, -1, -1):
        if t < frames - 1:
            backward.predict(1)
        ahead[t] = backward.belief()  # frames > t, moved to t
        if observe[t]:
            backward.observe(ids[t], scores[t])
        backward.prune()
    best = np.empty(frames, np.int64)
    for t in range(frames):
        forward.update(ids[t], scores[t], observe=bool(observe[t]))
        best[t] = _best_place(forward.belief(), ahead[t], config.max_speed)
    return best


def _best_place(past, future, max_speed: int) -> int:
    """Argmax over places of sum over speeds of past(place, v) * future(place, -v), where a state a
    belief does not hold has that belief's rest density."""
    speeds = 2 * max_speed + 1
    p_place, p_speed, p_prob, p_rest = past
    f_place, f_speed, f_prob, f_rest = future
    p_keys = p_place * speeds + p_speed + max_speed
    f_keys = f_place * speeds - f_speed + max_speed  # the backward run's speed, reversed
    keys = np.union1d(p_keys, f_keys)
    if keys.size == 0:
        return -1
    joint = _values(keys, p_keys, p_prob, p_rest) * _values(keys, f_keys, f_prob, f_rest)
    places, inverse = np.unique(keys // speeds, return_inverse=True)
    return int(places[np.argmax(np.bincount(inverse, weights=joint))])


def _values(keys: np.ndarray, held: np.ndarray, prob: np.ndarray, rest: float) -> np.ndarray:
    order = np.argsort(held)
    held, prob = held[order], prob[order]
    pos = np.searchsorted(held, keys).clip(max=max(held.size - 1, 0))
    hit = held[pos] == keys if held.size else np.zeros(keys.size, bool)
    return np.where(hit, prob[pos] if held.size else 0.0, rest)
