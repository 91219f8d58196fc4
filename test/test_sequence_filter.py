"""The sequence filter on synthetic routes with known true places and noisy scores.

Each frame's "retrieval" puts the true place among the top-K with a score only slightly above the
look-alike places, and often not first (single-frame top-1 is right on well under half the frames),
so the filter must earn its answer from the sequence.
"""

import numpy as np
import pytest

from vpr_core.sequence_filter import SequenceFilter, SequenceFilterConfig

MAP = 5000
K = 20
CONVERGE = 10  # frames within which the posterior must sit on the truth after a start or a jump


def retrieval(truth: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top-K of one frame: K-1 random places with noisy scores, the true place among them with a
    score drawn from a slightly higher mean (a weak, ambiguous single-frame signal)."""
    others = rng.choice(np.setdiff1d(np.arange(MAP), [truth]), K - 1, replace=False)
    ids = np.concatenate([[truth], others])
    scores = np.concatenate([[0.55], np.full(K - 1, 0.5)]) + rng.normal(0, 0.04, K)
    order = np.argsort(-scores)
    return ids[order], scores[order]


def run(route: list[int], seed: int = 0, config: SequenceFilterConfig | None = None):
    rng = np.random.default_rng(seed)
    f = SequenceFilter(config or SequenceFilterConfig(enabled=True), MAP)
    frames = [retrieval(t, rng) for t in route]
    estimates = [f.update(ids, scores) for ids, scores in frames]
    single = np.mean([ids[0] == t for (ids, _), t in zip(frames, route)])
    return estimates, single


def near(estimate, truth: int) -> bool:
    return abs(estimate.place_id - truth) <= 1


def test_posterior_concentrates_on_the_truth_within_a_few_frames():
    route = list(range(1000, 1100))
    estimates, single = run(route)
    assert single < 0.5  # the frames alone are unreliable
    first = next(n for n, e in enumerate(estimates) if near(e, route[n]))
    assert first < CONVERGE
    settled = [near(e, t) for e, t in zip(estimates[CONVERGE:], route[CONVERGE:])]
    assert np.mean(settled) >= 0.95
    assert min(e.probability for e, t in zip(estimates[CONVERGE:], route[CONVERGE:]) if near(e, t)) > 0.3
    assert estimates[-1].probability > 0.9


def test_recovers_after_a_kidnapping():
    route = list(range(500, 560)) + list(range(3500, 3560))
    estimates, _ = run(route, seed=1)
    assert all(near(e, t) for e, t in zip(estimates[40:60], route[40:60]))
    after = [near(e, t) for e, t in zip(estimates[60:], route[60:])]
    assert not after[0]  # the jump is not known in advance
    first = after.index(True)
    assert first < CONVERGE + 5
    assert np.mean(after[first:]) >= 0.95


@pytest.mark.parametrize("name, route", [
    ("stop", list(range(2000, 2030)) + [2029] * 15 + list(range(2030, 2060))),
    ("reverse", list(range(2000, 2040)) + list(range(2039, 1999, -1))),
    ("skip", list(range(2000, 2030)) + list(range(2030, 2090, 2))),
])
def test_stops_reversals_and_skips_keep_it_localized(name, route):
    estimates, _ = run(route, seed=2)
    correct = [near(e, t) for e, t in zip(estimates[CONVERGE:], route[CONVERGE:])]
    assert np.mean(correct) >= 0.85, name


def test_never_looks_ahead():
    """The answer for frame t is the same whether or not frames after t are fed later."""
    rng = np.random.default_rng(3)
    route = list(range(300, 340))
    frames = [retrieval(t, rng) for t in route]
    full = SequenceFilter(SequenceFilterConfig(enabled=True), MAP)
    answers = [full.update(ids, s) for ids, s in frames]
    for cut in (5, 17, 39):
        prefix = SequenceFilter(SequenceFilterConfig(enabled=True), MAP)
        last = [prefix.update(ids, s) for ids, s in frames[: cut + 1]][-1]
        assert last.place_id == answers[cut].place_id
        assert last.probability == answers[cut].probability
        np.testing.assert_array_equal(last.places, answers[cut].places)


def test_reset_forgets_the_route():
    rng = np.random.default_rng(4)
    f = SequenceFilter(SequenceFilterConfig(enabled=True), MAP)
    for t in range(100, 130):
        f.update(*retrieval(t, rng))
    ids, scores = retrieval(4000, rng)
    f.reset()
    fresh = SequenceFilter(SequenceFilterConfig(enabled=True), MAP)
    a, b = f.update(ids, scores), fresh.update(ids, scores)
    assert a.place_id == b.place_id and a.probability == b.probability


def test_cost_stays_bounded_by_the_hypotheses_cap():
    config = SequenceFilterConfig(enabled=True, max_hypotheses=64)
    estimates, _ = run([int(x) for x in np.random.default_rng(5).integers(0, MAP, 50)], config=config)
    assert max(e.hypotheses for e in estimates) <= 64


def test_blank_frames_only_move_the_belief():
    rng = np.random.default_rng(6)
    f = SequenceFilter(SequenceFilterConfig(enabled=True), MAP)
    for t in range(1000, 1040):
        f.update(*retrieval(t, rng))
    misleading = (np.arange(3000, 3000 + K), np.linspace(0.99, 0.9, K))
    assert abs(f.update(*misleading, observe=False).place_id - 1040) <= 1


def test_elapsed_time_moves_the_belief_further():
    rng = np.random.default_rng(7)
    config = SequenceFilterConfig(enabled=True, step_period_s=0.1, speed_change=0.0)
    f = SequenceFilter(config, MAP)
    second = 10**9
    for n, t in enumerate(range(1000, 1040)):
        f.update(*retrieval(t, rng), stamp_ns=n * second // 10)
    blank = (np.arange(3000, 3000 + K), np.linspace(0.99, 0.9, K))
    # 0.5 s later = 5 steps at speed 1: the belief is 5 places on, with no observation to help.
    assert abs(f.update(*blank, stamp_ns=44 * second // 10, observe=False).place_id - 1044) <= 1


@pytest.mark.parametrize("field, value", [
    ("top_k", 1), ("temperature", 0.0), ("temperature", float("nan")), ("max_speed", -1),
    ("speed_change", 1.5), ("lost_probability", -0.1), ("min_probability", 2.0), ("max_hypotheses", 0),
    ("step_period_s", -1.0), ("top_k", 2.5), ("confidence_radius", True),
])
def test_config_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        SequenceFilterConfig(**{field: value})


def test_an_empty_map_is_refused():
    with pytest.raises(ValueError, match="at least one place"):
        SequenceFilter(SequenceFilterConfig(), 0)
