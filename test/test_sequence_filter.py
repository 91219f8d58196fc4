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


def test_a_million_place_map_locks_on_as_readily_as_a_small_one():
    """A state's prior on a 1 M-place map is ~1e-7: hypotheses must still be started and kept."""
    rng = np.random.default_rng(13)
    places = 1_000_000
    f = SequenceFilter(SequenceFilterConfig(enabled=True), places)
    route = np.arange(400_000, 400_060)
    answers = []
    for t in route:
        others = rng.integers(0, places, K - 1)
        ids = np.concatenate([[t], others])
        scores = np.concatenate([[0.55], np.full(K - 1, 0.5)]) + rng.normal(0, 0.04, K)
        order = np.argsort(-scores)
        answers.append(f.update(ids[order], scores[order]))
    settled = [abs(e.place_id - t) <= 1 for e, t in zip(answers[CONVERGE:], route[CONVERGE:])]
    assert np.mean(settled) >= 0.95
    assert answers[-1].hypotheses > 0 and answers[-1].probability > 0.9


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


# ---- the compiled kernels against a dense reference -------------------------------------------

def _dense(f: SequenceFilter) -> np.ndarray:
    """The filter's belief as a dense [places, speeds] array (the rest spread over states not held)."""
    place, speed, prob, rest_density = f.belief()
    dense = np.full((f.map_size, 2 * f.config.max_speed + 1), rest_density)
    dense[place, speed + f.config.max_speed] = prob
    return dense


def _dense_predict(dense: np.ndarray, f: SequenceFilter) -> np.ndarray:
    """One motion step by brute force over every state: the definition the kernel must implement."""
    vmax, out = f.config.max_speed, np.zeros_like(dense)
    for p, v in zip(*np.nonzero(dense)):
        for u in range(dense.shape[1]):
            for j, pj in zip((-1, 0, 1), f._jitter):
                q = p + (u - vmax) + j
                if 0 <= q < f.map_size:
                    out[q, u] += dense[p, v] * f._transition[v, u] * pj
    return out


def test_motion_and_observation_kernels_equal_the_dense_definition():
    config = SequenceFilterConfig(enabled=True, max_speed=2, lost_probability=0.0,
                                  max_hypotheses=10_000)
    rng = np.random.default_rng(8)
    f = SequenceFilter(config, 60)
    for t in (20, 21, 22):
        f.update(*_small_retrieval(t, rng, 60))
    before = _dense(f)
    held = before.copy()
    held[before == f.belief()[3]] = 0.0  # the kernel moves held states; the rest stays uniform
    f.predict(1)
    expected = _dense_predict(held, f)
    place, speed, prob, _ = f.belief()
    keys = place * 5 + speed + 2
    assert np.all(np.diff(keys) > 0)  # sorted, one entry per state
    np.testing.assert_allclose(prob, expected[place, speed + 2], rtol=1e-12, atol=1e-15)
    assert np.count_nonzero(expected > 1e-300) == prob.size

    ids, scores = _small_retrieval(40, rng, 60)
    dense = _dense(f)
    f.observe(ids, scores)
    order = np.argsort(-scores)
    z = (scores - scores.min()) / (config.temperature * np.std(scores))
    likelihood = np.full(60, np.exp(-z.max()))
    likelihood[ids[order]] = np.exp(z[order] - z.max())
    expected = dense * likelihood[:, None]
    np.testing.assert_allclose(_dense(f), expected / expected.sum(), rtol=1e-9)


def _small_retrieval(truth: int, rng: np.random.Generator, places: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([[truth], rng.choice(np.setdiff1d(np.arange(places), [truth]), 5, replace=False)])
    return ids, np.concatenate([[0.6], np.full(5, 0.5)]) + rng.normal(0, 0.03, 6)


def test_pruning_keeps_the_most_probable_states_and_conserves_mass():
    config = SequenceFilterConfig(enabled=True, max_hypotheses=32)
    estimates, _ = run(list(range(1000, 1030)), config=config, seed=9)
    assert all(e.hypotheses <= 32 for e in estimates)
    f = SequenceFilter(config, MAP)
    rng = np.random.default_rng(9)
    for t in range(1000, 1010):
        f.update(*retrieval(t, rng))
    place, _, prob, rest_density = f.belief()
    total = prob.sum() + rest_density * (f._states - prob.size)
    assert total == pytest.approx(1.0, abs=1e-9)


# ---- odometry and offline smoothing -----------------------------------------------------------

def test_odometry_sets_the_motion_a_stop_holds_the_belief_in_place():
    rng = np.random.default_rng(10)
    config = SequenceFilterConfig(enabled=True, speed_change=0.0)
    f = SequenceFilter(config, MAP, place_spacing_m=2.0)
    for t in range(1000, 1030):  # 2 m per frame: one place per frame
        f.update(*retrieval(t, rng), travelled_m=2.0)
    blank = (np.arange(3000, 3000 + K), np.linspace(0.99, 0.9, K))
    for _ in range(5):  # standing still: the blank frames move nothing
        held = f.update(*blank, observe=False, travelled_m=0.0)
    assert abs(held.place_id - 1029) <= 1
    moved = f.update(*blank, observe=False, travelled_m=6.0)  # 3 places at once
    assert abs(moved.place_id - 1032) <= 1
    with pytest.raises(ValueError, match="place_spacing_m"):
        SequenceFilter(config, MAP, place_spacing_m=0.0)


def test_place_spacing_comes_from_the_map_poses(tmp_path):
    from vpr_core.mapdb import MapDB, PlaceRecord
    from vpr_core.sequence_filter import place_spacing

    n = 30
    rng = np.random.default_rng(11)
    desc = rng.standard_normal((n, 16)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    codes = np.packbits(rng.standard_normal((n, 64)) >= 0, axis=1)
    posed = [PlaceRecord(stamp_ns=i, source=f"{i}", pose=(1.5 * i, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)) for i in range(n)]
    bare = [PlaceRecord(stamp_ns=i, source=f"{i}") for i in range(n)]
    with_poses = MapDB.build(tmp_path / "posed", codes, desc, posed, fingerprint="f", encoder_config={})
    without = MapDB.build(tmp_path / "bare", codes, desc, bare, fingerprint="f", encoder_config={})
    assert place_spacing(with_poses) == pytest.approx(1.5)
    assert place_spacing(without) is None


def test_offline_smoothing_uses_later_frames_and_fixes_the_warm_up():
    from vpr_core.sequence_smoothing import smooth_route

    config = SequenceFilterConfig(enabled=True)
    warm_causal = warm_smoothed = 0
    for seed in range(4):  # weaker frames than retrieval() gives: the causal filter needs a few
        rng = np.random.default_rng(12 + seed)
        truth = np.arange(2000, 2040)
        frames = [retrieval(t, rng) for t in truth]
        ids = np.stack([i for i, _ in frames])
        scores = np.stack([s - 0.03 * (i == t) for (i, s), t in zip(frames, truth)])
        f = SequenceFilter(config, MAP)
        causal = np.array([f.update(i, s).place_id for i, s in zip(ids, scores)])
        smoothed = smooth_route(ids, scores, config, MAP)
        warm_causal += int(np.sum(np.abs(causal[:CONVERGE] - truth[:CONVERGE]) <= 1))
        warm_smoothed += int(np.sum(np.abs(smoothed[:CONVERGE] - truth[:CONVERGE]) <= 1))
        assert np.mean(np.abs(smoothed - truth) <= 1) >= 0.95
    assert warm_smoothed > warm_causal  # the start gets the evidence of the frames after it
    assert warm_smoothed >= 0.9 * 4 * CONVERGE
