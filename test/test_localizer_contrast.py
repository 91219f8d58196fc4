"""The pipeline's contrast rule on real frames: a dark frame is never an accepted localization and never
a loop-closure keyframe to be found, while the real corridor frames around it are unaffected."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_core.build_map import BuildConfig, build_map
from vpr_core.data import open_dataset
from vpr_core.data.frame import Frame
from vpr_core.keyframes import KeyframeConfig
from vpr_core.acceptance import AcceptanceConfig
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.loop import LoopConfig

PLACES = 8


def _frames(images: list[np.ndarray]) -> list[Frame]:
    return [Frame(index=i, rgb=im, name=f"f{i}", source="test", camera="cam", stamp_ns=i * 10**9)
            for i, im in enumerate(images)]


def _dark(seed: int) -> np.ndarray:
    """A tunnel-like frame: black with a little sensor noise."""
    return np.random.default_rng(seed).integers(0, 6, (120, 160, 3), dtype=np.uint8)


def test_a_dark_frame_is_never_accepted_while_real_frames_are(default_encoder, data_dir, tmp_path):
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    map_dir = tmp_path / "map"
    build_map([f for f, _ in zip(dataset.database, range(PLACES))], map_dir, default_encoder, BuildConfig())
    anything = AcceptanceConfig(min_score=-1.0, min_margin=0.0)      # every other test passes
    localizer = Localizer(LocalizerConfig(map_path=str(map_dir), localization=anything), default_encoder)
    real = [f.rgb for f, _ in zip(dataset.queries, range(3))]
    results = localizer.process(_frames([*real, _dark(0)]))
    assert all(r.accepted for r in results[:3]) and all(r.contrast > 0.1 for r in results[:3])
    assert results[3].contrast < 0.03 and results[3].matches and not results[3].accepted
    off = AcceptanceConfig(min_score=-1.0, min_margin=0.0, min_contrast=0.0)
    again = Localizer(LocalizerConfig(map_path=str(map_dir), localization=off), default_encoder)
    assert again.process(_frames([_dark(0)]))[0].accepted                      # the rule, not the map


def test_dark_keyframes_close_no_loop_in_slam_mode(default_encoder, data_dir):
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    # Departure off: only dark frames lie between the two views of frame 0, and they prove no departure.
    loop = LoopConfig(exclude_recent_frames=1, exclude_recent_seconds=0.0, min_score=0.5, consistency_k=1,
                      min_departure=0.0)
    every_frame = KeyframeConfig()                                             # no keyframe criterion
    localizer = Localizer(LocalizerConfig(mode="slam", loop=loop, keyframe=every_frame), default_encoder)
    first = list(dataset.queries)[0].rgb
    images = [_dark(1), first, _dark(2), _dark(3), _dark(4), first]
    results = localizer.process(_frames(images))
    assert [r.keyframe_id is not None for r in results] == [True] * 6
    records = list(localizer.loop_detector.records)
    assert [r.rejected_by for r in records[2:5]] == ["contrast"] * 3      # dark twins of frame 0 close nothing
    assert results[5].loop is not None and results[5].loop.match_id == results[1].keyframe_id
