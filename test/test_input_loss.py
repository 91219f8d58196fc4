"""Upstream loss estimated from image stamps: known drops in a camera's stamp sequence."""

import numpy as np

from vpr_core.input_loss import UpstreamLoss

PERIOD_NS = 100_000_000  # 10 Hz


def _feed(stamps) -> UpstreamLoss:
    loss = UpstreamLoss()
    for s in stamps:
        loss.add(int(s))
    return loss


def test_no_gaps_no_loss_and_the_period_is_found():
    rng = np.random.default_rng(0)
    stamps = np.arange(200) * PERIOD_NS + rng.integers(-3_000_000, 3_000_000, 200)  # 3 ms jitter
    estimate = _feed(stamps).estimate()
    assert estimate.received == 200 and estimate.lost == 0
    assert abs(estimate.period_s - 0.1) < 0.005


def test_dropped_frames_are_counted_from_the_gaps():
    rng = np.random.default_rng(1)
    sent = np.arange(300) * PERIOD_NS
    keep = np.ones(300, bool)
    keep[1:] = rng.random(299) > 0.3  # 30 % lost, from the second frame on
    estimate = _feed(sent[keep]).estimate()
    truly_lost = int((~keep).sum())
    assert estimate.received == int(keep.sum())
    assert abs(estimate.lost - truly_lost) <= 0.05 * truly_lost
    assert abs(estimate.loss_ratio - truly_lost / 300) < 0.02


def test_heavy_loss_keeps_the_period():
    """80 % lost: most intervals are several periods long; the period must not follow them."""
    rng = np.random.default_rng(2)
    sent = np.arange(500) * PERIOD_NS
    keep = rng.random(500) > 0.8
    keep[:8] = True
    estimate = _feed(sent[keep]).estimate()
    truly_lost = int((~keep).sum())
    assert abs(estimate.period_s - 0.1) < 0.005
    assert abs(estimate.lost - truly_lost) <= 0.05 * truly_lost


def test_a_restarted_source_starts_over_without_counting():
    first = np.arange(50) * PERIOD_NS + 10**12
    second = np.arange(50) * PERIOD_NS  # stamps back to the start: a replayed bag
    estimate = _feed(np.concatenate([first, second])).estimate()
    assert estimate.lost == 0 and estimate.received == 100
