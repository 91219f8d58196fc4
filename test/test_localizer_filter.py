"""The localizer with the sequence filter on real frames: a Nordland-tiny development slice, winter
queries in route order against the summer map."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import REPO
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.data import open_dataset
from vpr_core.data.frame import Frame
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.messages import place_match_array_fields
from vpr_core.sequence_filter import SequenceFilterConfig

SLICE = "first=images-12010&last=images-12800"  # 80 places of the development section
WARM_UP = 10


@pytest.fixture(scope="module")
def encoder():
    """The shipped model on ONNX Runtime, one thread: the filter's tests run some 600 frames through it,
    and ONNX Runtime encodes them 2.5 times faster than torch (the same model; test_engine checks the two agree)."""
    return create_encoder(EncoderConfig(checkpoint=str(REPO / "checkpoints" / "lite0-nordland"),
                                        backend="onnxruntime", threads=1))


@pytest.fixture(scope="module")
def route(encoder, data_dir, tmp_path_factory):
    dataset = open_dataset(f"seasons:{data_dir / 'nordland_tiny'}?{SLICE}")
    map_dir = tmp_path_factory.mktemp("filter") / "map"
    build_map(list(dataset.database), map_dir, encoder, BuildConfig())
    frames = [Frame(index=i, rgb=f.rgb, name=f.name, source=f.source, camera="cam", stamp_ns=i * 10**8)
              for i, f in enumerate(dataset.queries)]
    return dataset, map_dir, frames


def _run(encoder, map_dir, frames, sequence: SequenceFilterConfig):
    localizer = Localizer(LocalizerConfig(map_path=str(map_dir), filter=sequence), encoder)
    return [r for f in frames for r in localizer.process([f])]


def test_filter_puts_its_place_first_and_keeps_the_raw_retrieval(encoder, route):
    dataset, map_dir, frames = route
    results = _run(encoder, map_dir, frames, SequenceFilterConfig(enabled=True))
    plain = _run(encoder, map_dir, frames, SequenceFilterConfig())
    for r, p in zip(results, plain):
        assert r.filtered and not p.filtered and p.raw_matches == [] and p.probability is None
        # The filter asks the search for more results (its top_k), a larger re-rank pool: the raw retrieval
        # is best first and its best is never worse than the plain search's.
        raw_scores = [m.score for m in r.raw_matches]
        assert raw_scores == sorted(raw_scores, reverse=True) and len(r.raw_matches) == len(p.matches)
        assert raw_scores[0] >= p.matches[0].score - 1e-6
        assert 0.0 <= r.probability <= 1.0
        assert r.accepted == (r.probability >= SequenceFilterConfig.min_probability and r.contrast >= 0.03)
        assert len({m.place_id for m in r.matches}) == len(r.matches)
    def correct(rs):
        return [bool(np.isin(r.matches[0].place_id, dataset.positives(i))) for i, r in enumerate(rs)]
    filtered, single = correct(results), correct(plain)
    assert np.mean(filtered[WARM_UP:]) >= 0.9
    assert np.mean(filtered) >= np.mean(single)
    assert any(r.matches[0].place_id != r.raw_matches[0].place_id for r in results)  # it does change answers
    fields = place_match_array_fields(results[-1], {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": "cam"}, "map", 1.0)
    assert fields["filtered"] and fields["probability"] == results[-1].probability
    assert [m["place_id"] for m in fields["raw_matches"]] == [m.place_id for m in results[-1].raw_matches]
    off = place_match_array_fields(plain[-1], {"stamp": {"sec": 0, "nanosec": 0}, "frame_id": "cam"}, "map", 1.0)
    assert not off["filtered"] and math.isnan(off["probability"]) and off["raw_matches"] == []


def test_each_camera_has_its_own_filter(encoder, route):
    """Two cameras on different parts of the route: each one's belief follows its own frames."""
    dataset, map_dir, frames = route
    localizer = Localizer(LocalizerConfig(map_path=str(map_dir), filter=SequenceFilterConfig(enabled=True)),
                          encoder)
    a, b = frames[:30], frames[50:80]
    for fa, fb in zip(a, b):
        ra, rb = localizer.process([fa, Frame(index=fb.index, rgb=fb.rgb, name=fb.name, source=fb.source,
                                              camera="other", stamp_ns=fb.stamp_ns)])
    assert np.isin(ra.matches[0].place_id, dataset.positives(29))
    assert np.isin(rb.matches[0].place_id, dataset.positives(79))
    localizer.reset_filters()
    fresh = localizer.process([frames[0]])[0]
    assert fresh.probability < ra.probability


def _posed(frame: Frame, x: float, rgb: np.ndarray | None = None) -> Frame:
    return Frame(index=frame.index, rgb=frame.rgb if rgb is None else rgb, name=frame.name, source=frame.source,
                 camera="cam", stamp_ns=frame.stamp_ns, pose=np.array([x, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))


def test_odometry_moves_the_belief_by_the_distance_travelled(encoder, route, tmp_path):
    """A map whose places are 2 m apart; the robot's odometry says it stops: blank frames (no
    evidence) then leave the belief where it stopped, where one step per frame would carry it on."""
    dataset, _, frames = route
    places = [_posed(f, 2.0 * i) for i, f in enumerate(dataset.database)]
    build_map(places, tmp_path / "posed", encoder, BuildConfig())
    localizer = Localizer(LocalizerConfig(map_path=str(tmp_path / "posed"), filter=SequenceFilterConfig(enabled=True)),
                          encoder)
    assert localizer._place_spacing_m == pytest.approx(2.0)
    for i, f in enumerate(frames[:30]):
        last = localizer.process([_posed(f, 2.0 * i)])[0]
    assert np.isin(last.matches[0].place_id, dataset.positives(29))
    blank = np.zeros_like(frames[0].rgb)
    standing = [localizer.process([_posed(frames[29], 58.0, blank)])[0] for _ in range(6)]
    assert not any(r.accepted for r in standing)  # blank frames are never accepted
    assert abs(standing[-1].matches[0].place_id - last.matches[0].place_id) <= 1

    without = Localizer(LocalizerConfig(map_path=str(tmp_path / "posed"), filter=SequenceFilterConfig(enabled=True)),
                        encoder)
    for f in frames[:30]:
        without.process([f])
    moving = [without.process([Frame(index=0, rgb=blank, name="blank", source="s", camera="cam")])[0]
              for _ in range(6)]
    assert moving[-1].matches[0].place_id - last.matches[0].place_id >= 4  # one step per frame: it carried on
