"""A causal Bayes filter over map places: a route of weak single-frame matches becomes a localization.

Why: one frame's retrieval is often wrong on long routes with look-alike places (Nordland winter
against summer: under a third of single frames find their place), but a robot moves along the map's
recorded sequence, so the right place keeps showing up among the top results at ids that advance
consistently from frame to frame, while wrong matches jump around. SeqSLAM (Milford and Wyeth 2012)
exploits this offline; here it is a forward filter (answer for frame t from frames <= t only) so the
node can answer each frame when it arrives.

States are (place id, speed) pairs, speed an integer number of places per motion step in
[-max_speed, max_speed]: a constant-speed prior accumulates evidence along a line like SeqSLAM, while
speed changes (probability ``speed_change`` per step, to any other speed alike, so a reversal is one
change) allow stops, slowdowns, reversals and skips. Each step the place also jitters by one with
probability ``position_jitter`` (speeds that are not whole places per frame). Mass that leaves the
map, and a share ``lost_probability`` of all mass every step, goes to the "rest": a uniform mass
over every state not held explicitly. The rest is how a kidnapped robot recovers: its places
re-enter the support when they appear among the top-K results.

Observation: the top-K two-stage scores of the frame. A place in the top-K gets log-likelihood
``(score - floor) / (temperature * spread)``, with ``floor`` the K-th score (every place outside the
top-K scored at most that, so they all get the floor's likelihood) and ``spread`` the standard
deviation of the top-K scores (so one temperature fits maps and models whose cosines spread
differently). The posterior is kept sparse (at most ``max_hypotheses`` states, each more probable
than a state not held; what is pruned joins the rest), so a frame costs O(K * speeds + support *
speeds), whatever the map size (vpr_core/sequence_kernels.py).

Motion steps between two frames: from odometry when the frame has a pose and the map's places have
poses (distance travelled / the map's median spacing between consecutive places; zero when the robot
stands still), else from the elapsed time (``step_period_s``), else one per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_core import sequence_kernels as kernels


@dataclass(frozen=True)
class SequenceFilterConfig:
    """Settings of the sequence filter; defaults chosen on the Nordland-tiny development section
    (bench/sequence_filter.py, README "Sequence filter")."""

    enabled: bool = False
    top_k: int = 200  # two-stage results per frame that enter the observation
    temperature: float = 1.5  # divides the z-normalised scores: lower trusts one frame more
    max_speed: int = 3  # places per motion step, both directions
    speed_change: float = 0.05  # probability per step that the speed changes (to any other speed)
    position_jitter: float = 0.05  # probability per step of one extra place forward or backward
    lost_probability: float = 0.003  # share of the mass moved to the uniform rest per step (kidnapping)
    max_hypotheses: int = 256  # states kept explicitly
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
                                ("lost_probability", 0.0, 1.0), ("min_probability", 0.0, 1.0)):
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
    the map's recorded order). ``place_spacing_m`` (the map's median distance between consecutive
    places, from its poses) lets odometry set the motion: one step per that many metres travelled."""

    def __init__(self, config: SequenceFilterConfig, map_size: int, place_spacing_m: float | None = None) -> None:
        if map_size < 1:
            raise ValueError(f"the sequence filter needs a map with at least one place, got {map_size}")
        if place_spacing_m is not None and not (math.isfinite(place_spacing_m) and place_spacing_m > 0):
            raise ValueError(f"place_spacing_m={place_spacing_m!r} must be a finite distance > 0 (or None)")
        self.config = config
        self.map_size = int(map_size)
        self.place_spacing_m = place_spacing_m
        speeds = 2 * config.max_speed + 1
        self._speeds = speeds
        self._states = self.map_size * speeds
        change = config.speed_change / (speeds - 1) if speeds > 1 else 0.0
        self._transition = np.full((speeds, speeds), change)
        np.fill_diagonal(self._transition, 1.0 - config.speed_change if speeds > 1 else 1.0)
        jitter = config.position_jitter
        self._jitter = np.array([jitter / 2, 1.0 - jitter, jitter / 2])
        self.reset()

    def reset(self) -> None:
        """Forget the route: the next frame starts from a uniform belief (a restart or relocation)."""
        self._place = np.empty(0, np.int64)
        self._speed = np.empty(0, np.int64)
        self._prob = np.empty(0, np.float64)
        self._rest = 1.0
        self._last_stamp_ns: int | None = None
        self._odometry_steps = 0.0  # travelled distance not yet turned into whole steps, in steps

    def update(self, ids: np.ndarray, scores: np.ndarray, stamp_ns: int | None = None,
               observe: bool = True, travelled_m: float | None = None) -> FilterEstimate:
        """Moves the belief to this frame and weighs it by the frame's top-K search results (ids best
        first, -1 past the results). ``observe=False`` (e.g. a blank frame) only moves it.
        ``travelled_m``: odometry distance since the previous frame (used with ``place_spacing_m``)."""
        self.predict(self._steps(stamp_ns, travelled_m))
        if observe:
            self.observe(ids, scores)
        self.prune()
        return self._estimate()

    def predict(self, steps: int = 1) -> None:
        """Moves the belief by ``steps`` motion steps; a share ``lost_probability`` joins the rest."""
        for _ in range(steps):
            if self._prob.size == 0:
                break
            self._place, self._speed, self._prob, lost = kernels.predict(
                self._place, self._speed, self._prob, self._transition, self._jitter, self.map_size,
                self.config.max_speed)
            self._rest += lost  # off the map's ends: lost
        lost = self.config.lost_probability
        self._rest += lost * float(self._prob.sum())
        self._prob *= 1 - lost

    def observe(self, ids: np.ndarray, scores: np.ndarray) -> None:
        """Weighs the belief by one frame's top-K results (ids best first, -1 past the results)."""
        ids = np.asarray(ids, dtype=np.int64)[: self.config.top_k]
        by_id = np.argsort(ids, kind="stable")
        ids, likelihood, floor = kernels.likelihoods(
            ids[by_id], np.asarray(scores, dtype=np.float64)[: self.config.top_k][by_id], self.map_size,
            float(self.config.temperature))
        if ids.size < 2:
            return
        self._place, self._speed, self._prob, self._rest = kernels.observe(
            self._place, self._speed, self._prob, self._rest, self._states - self._prob.size, ids, likelihood,
            floor, self.config.max_speed)

    def belief(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The held states (place, speed, probability; sorted by place, then speed) and the
        probability of each state not held (the rest spread evenly)."""
        outside = self._states - self._prob.size
        return self._place, self._speed, self._prob, self._rest / outside if outside > 0 else 0.0

    # ---- motion ---------------------------------------------------------------------------------
    def _steps(self, stamp_ns: int | None, travelled_m: float | None) -> int:
        """Motion steps since the last frame: from odometry when the map's place spacing is known,
        else elapsed time / step_period_s, else one per frame. Odometry can give zero steps (the
        robot stood still); the fraction of a step left over is carried to the next frame."""
        period = self.config.step_period_s
        last, self._last_stamp_ns = self._last_stamp_ns, stamp_ns
        if travelled_m is not None and self.place_spacing_m is not None and math.isfinite(travelled_m):
            self._odometry_steps += max(travelled_m, 0.0) / self.place_spacing_m
            steps = min(int(self._odometry_steps), self.config.max_steps)
            self._odometry_steps = min(self._odometry_steps - steps, 1.0)
            return steps
        if period <= 0 or stamp_ns is None or last is None:
            return 1
        return int(np.clip(round((stamp_ns - last) * 1e-9 / period), 1, self.config.max_steps))

    def prune(self) -> None:
        """Drops into the rest every state no more probable than a state not held (it tells nothing
        the rest does not) and, past max_hypotheses, the least probable. A threshold relative to the
        rest, not an absolute one, so that a map of a million places (a prior of 1e-7 per state)
        can start hypotheses as readily as a small one."""
        cap, n = self.config.max_hypotheses, self._prob.size
        kth = float(np.partition(self._prob, n - cap)[n - cap]) if n > cap else 0.0
        self._place, self._speed, self._prob, dropped = kernels.prune(
            self._place, self._speed, self._prob, self.belief()[3], cap, kth)
        self._rest += dropped

    # ---- answer ---------------------------------------------------------------------------------
    def _estimate(self) -> FilterEstimate:
        if self._prob.size == 0:
            return FilterEstimate(-1, 0.0, np.empty(0, np.int64), np.empty(0), 0)
        rest_per_place = self._rest / self.map_size
        places, mass = kernels.place_masses(self._place, self._prob, rest_per_place)
        order = np.argsort(-mass, kind="stable")
        places, mass = places[order], mass[order]
        best, radius = int(places[0]), self.config.confidence_radius
        near = np.abs(places - best) <= radius
        width = min(best + radius, self.map_size - 1) - max(best - radius, 0) + 1
        probability = float(mass[near].sum() + rest_per_place * (width - near.sum()))
        return FilterEstimate(best, min(probability, 1.0), places, mass, int(self._prob.size))


def place_spacing(place_map: Any, samples: int = 1000) -> float | None:
    """The map's median distance between consecutive places, from the poses of up to ``samples``
    evenly spread pairs (reading every record of a large map would cost seconds); None when the map
    has no poses or its consecutive places do not move. Odometry divided by it gives motion steps."""
    n = place_map.size
    if n < 2:
        return None
    first = np.unique(np.linspace(0, n - 2, min(samples, n - 1)).astype(np.int64))
    records = place_map.records(np.concatenate([first, first + 1]))
    gaps = [math.dist(a.pose[:3], b.pose[:3]) for a, b in zip(records[: first.size], records[first.size:])
            if a.pose is not None and b.pose is not None]
    spacing = float(np.median(gaps)) if gaps else 0.0
    return spacing if spacing > 1e-6 else None


def compile_kernels() -> None:
    """Compiles the filter's kernels now (a few seconds the first time on a machine, then loaded
    from numba's cache), so that a node's first frame does not pay for it."""
    f = SequenceFilter(SequenceFilterConfig(enabled=True), 8)
    f.update(np.arange(4), np.array([0.9, 0.8, 0.7, 0.6]))
    f.update(np.arange(4), np.array([0.9, 0.8, 0.7, 0.6]))
