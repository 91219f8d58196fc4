"""The sequence filter's per-frame loops, compiled with numba.

Why compiled loops: a frame moves a few hundred sparse states through a few dozen transitions each
and merges the results by state. As numpy calls that took ~190 small array operations per frame
(0.4 ms, nearly all call overhead); as one pass over sorted arrays it is a few microseconds of work.

States are kept sorted by key = place * speeds + (speed + max_speed), so every kernel merges
sorted runs in one linear pass instead of sorting.
"""

from __future__ import annotations

import numba
import numpy as np

_JIT = {"cache": True, "nogil": True}


@numba.njit(inline="always", **_JIT)
def _hand_out(ring: np.ndarray, touched: np.ndarray, start: int, stop: int, mask: int, max_speed: int,
              out_place: np.ndarray, out_speed: np.ndarray, out_prob: np.ndarray, count: int) -> int:
    """Appends the collected mass of target places ``start``..``stop - 1`` to the output in key
    order and clears their ring slots; returns the new output count. ``predict`` hands out inside its
    loop and once after it; inlined at numba's IR level, it runs as fast as the loop written out twice."""
    for q in range(start, stop):
        slot = q & mask
        if touched[slot]:
            for u in range(ring.shape[1]):
                if ring[slot, u] > 0.0:
                    out_place[count] = q
                    out_speed[count] = u - max_speed
                    out_prob[count] = ring[slot, u]
                    count += 1
                    ring[slot, u] = 0.0
            touched[slot] = False
    return count


@numba.njit(**_JIT)
def predict(place: np.ndarray, speed: np.ndarray, prob: np.ndarray, transition: np.ndarray,
            jitter: np.ndarray, map_size: int, max_speed: int):
    """One motion step. ``transition[v, u]``: probability that speed index v becomes u;
    ``jitter[j]``: probability of an extra place offset j - 1. The place moves by the new speed
    plus the jitter. Returns the new (place, speed, prob) sorted by key, and the mass that left
    the map.

    The targets of one source place lie within reach = max_speed + 1 places of it, and sources come
    in place order, so a ring buffer of at least 2 * reach + 1 places collects each target's mass
    and hands it out, in key order, as soon as no later source can reach it (places are >= 0 there).
    """
    speeds = 2 * max_speed + 1
    reach = max_speed + 1
    width = 1  # a power of two >= 2 * reach + 1: the slot of a place is then a bit mask, not a division
    while width < 2 * reach + 1:
        width *= 2
    mask = width - 1
    ring = np.zeros((width, speeds))
    touched = np.zeros(width, np.bool_)
    n = place.size
    out_place = np.empty(n * speeds * 3, np.int64)
    out_speed = np.empty(n * speeds * 3, np.int64)
    out_prob = np.empty(n * speeds * 3)
    count = 0
    lost = 0.0
    low = max(place[0] - reach, 0) if n else 0  # smallest target place not yet handed out
    for i in range(n):
        p = place[i]
        if p - reach > low:  # every target below p - reach is complete
            count = _hand_out(ring, touched, low, min(p - reach, low + width), mask, max_speed,
                              out_place, out_speed, out_prob, count)
            low = max(p - reach, low)
        v = speed[i] + max_speed
        for u in range(speeds):
            t = transition[v, u] * prob[i]
            if t == 0.0:
                continue
            for j in range(3):
                if jitter[j] == 0.0:
                    continue
                q = p + u - max_speed + j - 1
                if q < 0 or q >= map_size:
                    lost += t * jitter[j]
                    continue
                slot = q & mask
                ring[slot, u] += t * jitter[j]
                touched[slot] = True
    count = _hand_out(ring, touched, low, low + width, mask, max_speed, out_place, out_speed, out_prob, count)
    return out_place[:count], out_speed[:count], out_prob[:count], lost


@numba.njit(**_JIT)
def likelihoods(ids: np.ndarray, scores: np.ndarray, map_size: int, temperature: float):
    """The frame's evidence from its results sorted by id: the distinct valid places, their
    likelihoods relative to the best one, and the likelihood of every place outside the list (scored
    at most the lowest listed score: the floor). Scores are z-normalised by their spread over the
    list, so one temperature fits models whose cosines spread differently. A place listed twice
    keeps its best score."""
    place = np.empty(ids.size, np.int64)
    best = np.empty(ids.size)
    count = 0
    for k in range(ids.size):
        if ids[k] < 0 or ids[k] >= map_size or not np.isfinite(scores[k]):
            continue
        if count and place[count - 1] == ids[k]:
            best[count - 1] = max(best[count - 1], scores[k])
        else:
            place[count] = ids[k]
            best[count] = scores[k]
            count += 1
    if count < 2:
        return place[:count], best[:count], 1.0
    low, high, mean = best[0], best[0], 0.0
    for k in range(count):
        low, high, mean = min(low, best[k]), max(high, best[k]), mean + best[k] / count
    spread = 0.0
    for k in range(count):
        spread += (best[k] - mean) ** 2 / count
    scale = temperature * max(np.sqrt(spread), 1e-6)
    top = (high - low) / scale
    likelihood = np.empty(count)
    for k in range(count):
        likelihood[k] = np.exp((best[k] - low) / scale - top)
    return place[:count], likelihood, np.exp(-top)


@numba.njit(**_JIT)
def observe(place: np.ndarray, speed: np.ndarray, prob: np.ndarray, rest: float, outside: int,
            ids: np.ndarray, likelihood: np.ndarray, floor: float, max_speed: int):
    """Weighs the belief by one frame: states at a place of ``ids`` (sorted, unique) by its
    ``likelihood``, every other state and the rest by ``floor``. A state of a listed place that the
    support lacks enters from the rest at the rest's density (``outside`` states make up the rest).
    Returns the normalised (place, speed, prob, rest)."""
    speeds = 2 * max_speed + 1
    density = rest / outside if outside > 0 else 0.0
    n, m = place.size, ids.size * speeds
    out_place = np.empty(n + m, np.int64)
    out_speed = np.empty(n + m, np.int64)
    out_prob = np.empty(n + m)
    count = 0
    fresh = 0
    i = 0
    for c in range(ids.size):  # candidate states in key order
        cp, lik = ids[c], likelihood[c]
        first = cp * speeds
        while i < n and place[i] * speeds + speed[i] + max_speed < first:
            out_place[count], out_speed[count], out_prob[count] = place[i], speed[i], prob[i] * floor
            count += 1
            i += 1
        for u in range(speeds):
            if i < n and place[i] == cp and speed[i] + max_speed == u:
                out_prob[count] = prob[i] * lik
                i += 1
            else:
                out_prob[count] = density * lik
                fresh += 1
            out_place[count], out_speed[count] = cp, u - max_speed
            count += 1
    while i < n:
        out_place[count], out_speed[count], out_prob[count] = place[i], speed[i], prob[i] * floor
        count += 1
        i += 1
    rest_out = density * (outside - fresh) * floor
    total = rest_out
    for k in range(count):
        total += out_prob[k]
    for k in range(count):
        out_prob[k] /= total
    return out_place[:count], out_speed[:count], out_prob[:count], rest_out / total


@numba.njit(**_JIT)
def prune(place: np.ndarray, speed: np.ndarray, prob: np.ndarray, floor: float, cap: int, kth: float):
    """Keeps the states of probability above ``floor``, at most ``cap`` of them: the most probable,
    ties at the cut kept in key order. ``kth``: the cap-th largest probability (any value when there
    are at most ``cap`` states). Returns the kept states and the mass dropped."""
    n = prob.size
    candidates = 0
    for k in range(n):
        if prob[k] > floor:
            candidates += 1
    threshold, ties = floor, 0  # with room for every candidate, all of them stay
    if candidates > cap:
        threshold, ties = kth, cap  # kth > floor here
        for k in range(n):
            if prob[k] > threshold:
                ties -= 1
    keep = np.zeros(n, np.bool_)
    dropped = 0.0
    for k in range(n):
        if prob[k] > threshold or (prob[k] == threshold and ties > 0):
            keep[k] = True
            if prob[k] == threshold:
                ties -= 1
        else:
            dropped += prob[k]
    return place[keep], speed[keep], prob[keep], dropped


@numba.njit(**_JIT)
def place_masses(place: np.ndarray, prob: np.ndarray, rest_per_place: float):
    """The belief per held place (states summed over speeds; place-sorted input), plus the rest's
    share of each."""
    n = place.size
    places = np.empty(n, np.int64)
    mass = np.empty(n)
    count = 0
    for k in range(n):
        if count and places[count - 1] == place[k]:
            mass[count - 1] += prob[k]
        else:
            places[count] = place[k]
            mass[count] = prob[k] + rest_per_place
            count += 1
    return places[:count], mass[:count]

