"""A causal Bayes filter over map places: a route of weak single-frame matches becomes a localization.

Why: one frame's retrieval is often wrong on long routes with look-alike places (Nordland winter
against summer: under a third of single frames find their place), but a robot moves along the map's
recorded sequence, so the right place keeps showing up among the top results at ids that advance
consistently from frame to frame, while wrong matches jump around. SeqSLAM (Milford and Wyeth 2012)
exploits this offline; here it is a forward filter (answer for frame t from frames <= t only) so the
node can answer each frame when it arrives.

States are (place id, speed) pairs, speed an integer number of places per motion step in
[-max_speed, max_speed]: a constant-speed prior accumulates evidence along a line like SeqSLAM, while
speed changes (probability ``speed_change`` per step, by one place per step) allow stops, slowdowns,
reversals and skips. Each step the place also jitters by one with probability ``position_jitter``
(speeds that are not whole places per frame). Mass that leaves the map, and a share
``lost_probability`` of all mass every step, goes to the "rest": a uniform mass over every state not
held explicitly. The rest is how a kidnapped robot recovers: its places re-enter the support when
they appear among the top-K results.

Observation: the top-K two-stage scores of the frame. A place in the top-K gets log-likelihood
``(score - floor) / (temperature * spread)``, with ``floor`` the K-th score (every place outside the
top-K scored at most that, so they all get the floor's likelihood) and ``spread`` the standard
deviation of the top-K scores (so one temperature fits maps and models whose cosines spread
differently). The posterior is kept sparse (at most ``max_hypotheses`` states of probability >=
``prune_below``; what is pruned joins the rest), so a frame costs O(K * speeds + support), whatever
the map size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SequenceFilterConfig:
    """Settings of the sequence filter; defaults chosen on the Nordland-tiny development section
    (bench/sequence_filter.py, README "Sequence filter")."""

    enabled: bool = False
    top_k: int = 50  # two-stage results per frame that enter the observation
    temperature: float = 1.0  # divides the z-normalised scores: lower trusts one frame more
    max_speed: int = 3  # places per motion step, both directions
    speed_change: float = 0.05  # probability per step that the speed changes by one place per step
    position_jitter: float = 0.1  # probability per step of one extra place forward or backward
    lost_probability: float = 0.01  # share of the mass moved to the uniform rest per step (kidnapping)
    max_hypotheses: int = 256  # states kept explicitly
    prune_below: float = 1e-5  # states below this probability join the uniform rest
    confidence_radius: int = 1  # places within this many ids of the best count towards its probability
    min_probability: float = 0.5  # a frame is accepted when its best place holds at least this
    step_period_s: float = 0.0  # > 0: one motion step per this many seconds between frames; 0: one per frame
    max_steps: int = 10  # most motion steps for one gap between frames

    def __post_init__(self) -> None:
        for name, low in (("top_k", 2), ("max_hypotheses", 1), ("max_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SequenceFilterConfig.{name}={value!r} must be an integer >= {low}")
        for name in ("max_speed", "confidence_radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SequenceFilterConfig.{name}={value!r} must be an integer >= 0")
        for name, low, high in (("speed_change", 0.0, 1.0), ("position_jitter", 0.0, 1.0),
                                ("lost_probability", 0.0, 1.0), ("prune_below", 0.0, 1.0),
                                ("min_probability", 0.0, 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ValueError(f"SequenceFilterConfig.{name}={value!r} must be in [{low}, {high}]")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"SequenceFilterConfig.temperature={self.temperature!r} must be a finite number > 0")
        if not (math.isfinite(self.step_period_s) and self.step_period_s >= 0):
            raise ValueError(f"SequenceFilterConfig.step_period_s={self.step_period_s!r} must be >= 0 (0: one "
                             "motion step per frame)")


@dataclass(frozen=True)
class FilterEstimate:
    """The filter's answer for one frame: the most probable place, the posterior mass within
    ``confidence_radius`` places of it, and the ``places`` with their probabilities, best first."""

    place_id: int
    probability: float
    places: np.ndarray
    place_probabilities: np.ndarray
    hypotheses: int  # states held explicitly after this frame


class SequenceFilter:
    """The filter of one camera's frame sequence over a map of ``map_size`` places (ids 0..n-1 in
    the map's recorded order)."""

    def __init__(self, config: SequenceFilterConfig, map_size: int) -> None:
        if map_size < 1:
            raise ValueError(f"the sequence filter needs a map with at least one place, got {map_size}")
        self.config = config
        self.map_size = int(map_size)
        speeds = 2 * config.max_speed + 1
        self._speeds = speeds
        self._states = self.map_size * speeds
        # (speed change, position jitter) offsets and their probabilities, combined once: a motion
        # step is then one broadcast over the support.
        dv = np.array([-1, 0, 1])
        pv = np.array([config.speed_change / 2, 1 - config.speed_change, config.speed_change / 2])
        pj = np.array([config.position_jitter / 2, 1 - config.position_jitter, config.position_jitter / 2])
        self._dv = np.repeat(dv, 3)
        self._dj = np.tile(dv, 3)
        self._pw = np.repeat(pv, 3) * np.tile(pj, 3)
        self.reset()

    def reset(self) -> None:
        """Forget the route: the next frame starts from a uniform belief (a restart or relocation)."""
        self._place = np.empty(0, np.int64)
        self._speed = np.empty(0, np.int64)
        self._prob = np.empty(0, np.float64)
        self._rest = 1.0
        self._last_stamp_ns: int | None = None

    def update(self, ids: np.ndarray, scores: np.ndarray, stamp_ns: int | None = None,
               observe: bool = True) -> FilterEstimate:
        """Moves the belief to this frame and weighs it by the frame's top-K search results (ids best
        first, -1 past the results). ``observe=False`` (e.g. a blank frame) only moves it."""
        self._predict(self._steps(stamp_ns))
        ids = np.asarray(ids, dtype=np.int64)[: self.config.top_k]
        scores = np.asarray(scores, dtype=np.float64)[: self.config.top_k]
        valid = (ids >= 0) & (ids < self.map_size) & np.isfinite(scores)
        if observe and valid.sum() >= 2:
            self._observe(ids[valid], scores[valid])
        self._prune()
        return self._estimate()

    # ---- motion ---------------------------------------------------------------------------------
    def _steps(self, stamp_ns: int | None) -> int:
        """Motion steps since the last frame: one per frame, or elapsed time / step_period_s."""
        period = self.config.step_period_s
        last, self._last_stamp_ns = self._last_stamp_ns, stamp_ns
        if period <= 0 or stamp_ns is None or last is None:
            return 1
        return int(np.clip(round((stamp_ns - last) * 1e-9 / period), 1, self.config.max_steps))

    def _predict(self, steps: int) -> None:
        vmax = self.config.max_speed
        for _ in range(steps):
            if self._prob.size == 0:
                break
            speed = np.clip(self._speed[:, None] + self._dv[None, :], -vmax, vmax)
            place = self._place[:, None] + speed + self._dj[None, :]
            prob = self._prob[:, None] * self._pw[None, :]
            inside = (place >= 0) & (place < self.map_size)
            self._rest += float(prob[~inside].sum())  # off the map's ends: lost
            self._set_states(place[inside], speed[inside], prob[inside])
        lost = self.config.lost_probability
        self._rest += lost * float(self._prob.sum())
        self._prob *= 1 - lost

    def _set_states(self, place: np.ndarray, speed: np.ndarray, prob: np.ndarray) -> None:
        """The support as unique states, probabilities of equal states summed."""
        keys = place * self._speeds + (speed + self.config.max_speed)
        unique, inverse = np.unique(keys, return_inverse=True)
        self._prob = np.bincount(inverse, weights=prob, minlength=len(unique))
        self._place, speed_index = np.divmod(unique, self._speeds)
        self._speed = speed_index - self.config.max_speed

    # ---- observation ----------------------------------------------------------------------------
    def _observe(self, ids: np.ndarray, scores: np.ndarray) -> None:
        ids, first = np.unique(ids, return_index=True)  # a place listed twice keeps its best score
        scores = scores[first]
        floor = scores.min()
        spread = max(float(np.std(scores)), 1e-6)
        loglik = (scores - floor) / (self.config.temperature * spread)
        loglik -= loglik.max()  # likelihoods relative to the best: no overflow; floor exp(-max)
        floor_lik = math.exp(float(-((scores.max() - floor) / (self.config.temperature * spread))))
        # Top-K places' states the support lacks enter from the rest, at the rest's density.
        speeds = np.arange(-self.config.max_speed, self.config.max_speed + 1)
        new_place = np.repeat(ids, len(speeds))
        new_speed = np.tile(speeds, len(ids))
        held = self._place * self._speeds + (self._speed + self.config.max_speed)  # sorted keys
        new_keys = new_place * self._speeds + (new_speed + self.config.max_speed)
        fresh = ~_sorted_contains(held, new_keys)
        outside = self._states - self._prob.size
        density = self._rest / outside if outside > 0 else 0.0
        place = np.concatenate([self._place, new_place[fresh]])
        speed = np.concatenate([self._speed, new_speed[fresh]])
        prob = np.concatenate([self._prob, np.full(int(fresh.sum()), density)])
        rest = density * (outside - int(fresh.sum()))
        lik = np.full(place.size, floor_lik)
        pos = np.searchsorted(ids, place).clip(max=ids.size - 1)
        hit = ids[pos] == place
        lik[hit] = np.exp(loglik[pos[hit]])
        prob *= lik
        rest *= floor_lik
        total = float(prob.sum()) + rest
        order = np.argsort(place * self._speeds + speed, kind="stable")
        self._place, self._speed, self._prob = place[order], speed[order], prob[order] / total
        self._rest = rest / total

    def _prune(self) -> None:
        keep = self._prob >= self.config.prune_below
        cap = self.config.max_hypotheses
        if keep.sum() > cap:  # exactly the cap: states entering from the rest tie at one probability
            top = np.zeros_like(keep)
            top[np.argpartition(self._prob, -cap)[-cap:]] = True
            keep &= top
        if not keep.all():
            self._rest += float(self._prob[~keep].sum())
            self._place, self._speed, self._prob = self._place[keep], self._speed[keep], self._prob[keep]

    # ---- answer ---------------------------------------------------------------------------------
    def _estimate(self) -> FilterEstimate:
        rest_per_place = self._rest / self.map_size
        if self._prob.size == 0:
            return FilterEstimate(-1, 0.0, np.empty(0, np.int64), np.empty(0), 0)
        places, inverse = np.unique(self._place, return_inverse=True)
        mass = np.bincount(inverse, weights=self._prob, minlength=len(places)) + rest_per_place
        order = np.argsort(-mass, kind="stable")
        best = int(places[order[0]])
        radius = self.config.confidence_radius
        near = np.abs(places - best) <= radius
        width = min(best + radius, self.map_size - 1) - max(best - radius, 0) + 1
        probability = float(mass[near].sum() + rest_per_place * (width - near.sum()))
        return FilterEstimate(best, min(probability, 1.0), places[order], mass[order], int(self._prob.size))


def _sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which ``keys`` are in ``sorted_keys`` (ascending): one binary search each, which np.isin
    (a sort of both) does not guarantee."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, bool)
    pos = np.searchsorted(sorted_keys, keys).clip(max=sorted_keys.size - 1)
    return sorted_keys[pos] == keys
