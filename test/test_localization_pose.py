"""The pose output of the pipeline (~/pose), pose interpolation, slam sessions and run-time thresholds."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import REPO
from vpr_core import poses
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.data import Frame, open_dataset
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.localization_pose import PoseConfig, estimate_pose, widening
from vpr_core.acceptance import AcceptanceConfig
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapdb import MapDB
from vpr_core.messages import pose_with_covariance_fields

PLACES = 30
ENCODER = EncoderConfig(checkpoint=str(REPO / "checkpoints" / "lite0-nordland"), backend="onnxruntime")
# A camera 0.3 m ahead of and 0.2 m above the base, looking along the base's x axis (optical frame:
# z forward, x right, y down).
BASE_TO_CAMERA = poses.from_rt(Rotation.from_euler("ZYX", [-90, 0, -90], degrees=True), [0.3, 0.0, 0.2])


def yaw_pose(x: float, y: float, yaw_deg: float) -> np.ndarray:
    return poses.from_rt(Rotation.from_euler("z", yaw_deg, degrees=True), [x, y, 0.0])


def test_interpolation_is_linear_in_position_and_spherical_in_rotation():
    stamps = np.array([0, 1_000_000_000])
    track = np.stack([yaw_pose(0.0, 0.0, 0.0), yaw_pose(2.0, -4.0, 90.0)])
    mid = poses.interpolate(stamps, track, 250_000_000, max_span_ns=2 * 10**9, max_extrapolation_ns=0)
    np.testing.assert_allclose(mid, yaw_pose(0.5, -1.0, 22.5), atol=1e-12)
    exact = poses.interpolate(stamps, track, 10**9, max_span_ns=10**8, max_extrapolation_ns=0)
    np.testing.assert_array_equal(exact, track[1])
    assert poses.interpolate(stamps, track, 5 * 10**8, max_span_ns=10**8, max_extrapolation_ns=0) is None
    late = poses.interpolate(stamps, track, 1_050_000_000, max_span_ns=2 * 10**9, max_extrapolation_ns=10**8)
    np.testing.assert_array_equal(late, track[1])
    assert poses.interpolate(stamps, track, 1_200_000_000, max_span_ns=2 * 10**9, max_extrapolation_ns=10**8) is None
    assert poses.interpolate(np.array([], np.int64), np.zeros((0, 7)), 0, max_span_ns=1, max_extrapolation_ns=1) is None


def test_compose_and_inverse_and_refusals():
    a = poses.from_rt(Rotation.from_rotvec([0.3, -0.2, 1.1]), [1.0, 2.0, -3.0])
    np.testing.assert_allclose(poses.compose(a, poses.inverse(a))[:3], 0.0, atol=1e-12)
    assert abs(poses.compose(poses.inverse(a), a)[6]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="zero quaternion"):
        poses.as_pose([0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="7 finite numbers"):
        poses.as_pose([0, 0, math.nan, 0, 0, 0, 1])


def test_covariance_widens_as_the_margin_shrinks():
    config = PoseConfig(position_std_m=2.0, rotation_std_deg=10.0, full_margin=0.1, max_widening=5.0)
    assert widening(None, config) == 1.0 and widening(0.3, config) == 1.0
    assert widening(0.05, config) == pytest.approx(2.0)
    assert widening(0.0, config) == 5.0
    estimate = estimate_pose(yaw_pose(1, 2, 30), 0.025, poses.IDENTITY, config)
    np.testing.assert_allclose(np.diag(estimate.covariance),
                               [64.0] * 3 + [math.radians(40.0) ** 2] * 3)
    assert np.count_nonzero(estimate.covariance - np.diag(np.diag(estimate.covariance))) == 0
    with pytest.raises(ValueError, match="max_widening"):
        PoseConfig(max_widening=0.5)


def test_base_pose_is_the_camera_pose_through_the_extrinsic():
    camera = poses.compose(yaw_pose(4.0, 1.0, 45.0), BASE_TO_CAMERA)
    base = estimate_pose(camera, None, BASE_TO_CAMERA, PoseConfig()).pose
    np.testing.assert_allclose(base, yaw_pose(4.0, 1.0, 45.0), atol=1e-12)


@pytest.fixture(scope="module")
def corridor_with_poses(data_dir, tmp_path_factory):
    """A map of corridor places whose camera poses are known: place i at x = i metres, facing +x."""
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    encoder = create_encoder(ENCODER)
    refs = [replace(f, pose=yaw_pose(float(i), 0.0, 0.0)) for i, f in enumerate(list(dataset.database)[:PLACES])]
    map_dir = tmp_path_factory.mktemp("posed") / "map"
    build_map(refs, map_dir, encoder, BuildConfig(base_to_camera=tuple(BASE_TO_CAMERA)))
    return {"map": map_dir, "queries": list(dataset.queries)[:PLACES], "encoder": encoder}


def test_accepted_matches_give_the_matched_places_base_pose(corridor_with_poses):
    c = corridor_with_poses
    config = LocalizerConfig(map_path=str(c["map"]), encoder=ENCODER, base_to_camera=tuple(BASE_TO_CAMERA))
    localizer = Localizer(config, c["encoder"])
    results = localizer.process(c["queries"])
    accepted = [r for r in results if r.accepted]
    assert len(accepted) >= PLACES // 3, [r.matches[0].score for r in results]
    for r in results:
        assert (r.pose is not None) == r.accepted
    for r in accepted:
        best = r.matches[0].place_id
        np.testing.assert_allclose(r.pose.pose, yaw_pose(float(best), 0.0, 0.0), atol=1e-6)
        expected_var = (config.pose.position_std_m * widening(r.margin, config.pose)) ** 2
        assert r.pose.covariance[0, 0] == pytest.approx(expected_var)
        fields = pose_with_covariance_fields(r, {"stamp": {"sec": 1, "nanosec": 2}, "frame_id": "map"})
        assert fields["pose"]["pose"]["position"]["x"] == pytest.approx(best, abs=1e-6)
        assert len(fields["pose"]["covariance"]) == 36


def test_thresholds_change_at_run_time_and_bad_ones_change_nothing(corridor_with_poses):
    c = corridor_with_poses
    localizer = Localizer(LocalizerConfig(map_path=str(c["map"]), encoder=ENCODER), c["encoder"])
    assert any(r.accepted for r in localizer.process(c["queries"][:10]))
    current = dict(loop_min_score=0.65, loop_min_departure=0.35, loop_min_contrast=0.03,
                   keyframe=localizer.config.keyframe, pose=localizer.config.pose)
    localizer.update_thresholds(localization=AcceptanceConfig(min_score=1.0), **current)
    assert not any(r.accepted or r.pose for r in localizer.process(c["queries"][:10]))
    with pytest.raises(ValueError, match="min_score"):
        localizer.update_thresholds(localization=AcceptanceConfig(min_score=0.2),
                                    **dict(current, loop_min_score=3.0))
    assert localizer.config.localization.min_score == 1.0


def test_slam_sessions_are_new_after_reset_and_the_saved_map_loads(corridor_with_poses, tmp_path):
    c = corridor_with_poses
    slam_path = tmp_path / "slam"
    localizer = Localizer(LocalizerConfig(mode="slam", slam_map_path=str(slam_path), encoder=ENCODER,
                                          slam_frame_id="odom_test"), c["encoder"])
    with pytest.raises(ValueError, match="no keyframe yet"):
        localizer.save_slam_map()
    first = localizer.session_id
    frames = [replace(f, stamp_ns=(i + 1) * 10**9) for i, f in enumerate(c["queries"][:6])]
    results = localizer.process(frames)
    assert [r.keyframe_id for r in results] == list(range(6)) and {r.session_id for r in results} == {first}
    path, count = localizer.save_slam_map()
    assert (path, count) == (slam_path, 6)
    saved = MapDB.load(slam_path, expected_fingerprint=c["encoder"].fingerprint)
    assert saved.size == 6 and saved.frame_id == "odom_test"
    saved.close()
    localizer.reset()
    assert localizer.session_id != first and localizer.keyframe_count == 0
    assert any(p.name.startswith("slam.") for p in tmp_path.iterdir())  # the old map is kept aside
    memory = Localizer(LocalizerConfig(mode="slam", encoder=ENCODER), c["encoder"])
    with pytest.raises(ValueError, match="map.slam_path is empty"):
        memory.save_slam_map()
