"""Relative pose of a loop closure (T_match_query), its kind and its covariance, on a rendered room
whose camera poses are known exactly (``synthetic_scene``) and on exact synthetic correspondences."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_scene import load_textures, render, rotation, true_relative

from vpr_core.loop import Keyframe, LoopConfig, LoopDetector
from vpr_core.loop.geometry import GeometryConfig, extract_features, verify_features
from vpr_core.loop.camera_model import CameraModel
from vpr_core.loop.pose_estimation import estimate_relative_pose
from vpr_core.loop.relative_pose import (
    METRIC,
    NONE,
    ROTATION_ONLY,
    UNOBSERVED_VARIANCE,
    UP_TO_SCALE,
    RelativePose,
    RelativePoseConfig,
)

CAMERA = CameraModel(500.0, 500.0, 320.0, 240.0)
SIZE = (480, 640)
# A second camera of another make: other resolution, focal lengths, centre and lens distortion.
OTHER_CAMERA = CameraModel(400.0, 410.0, 250.0, 195.0, (-0.08, 0.01, 0.0005, -0.0003, 0.0))
OTHER_SIZE = (384, 512)
MATCH_POSE = (np.eye(3), np.array([0.0, 0.0, -1.5]))
# The query camera moved 0.58 m (sideways, a little down and forward) and turned 12.6 degrees.
MOVED_POSE = (rotation(12.0, 4.0), np.array([0.5, 0.05, -1.2]))
TURNED_POSE = (rotation(15.0, 4.0), MATCH_POSE[1])  # same centre: a pure rotation
BACKWARDS_POSE = (rotation(180.0), MATCH_POSE[1])  # sees the opposite wall only


class Room:
    """The rendered room, textured with frames of the data sets, and the features of its views, each
    computed once: rendering and SIFT take a few tenths of a second."""

    def __init__(self, data_dir: Path) -> None:
        self.textures = load_textures(data_dir)
        self._views: dict[tuple[str, str, bool], object] = {}

    def view(self, name: str, method: str, with_depth: bool = False):
        key = (name, method, with_depth)
        if key not in self._views:
            camera, size = (OTHER_CAMERA, OTHER_SIZE) if name == "other" else (CAMERA, SIZE)
            pose = {"match": MATCH_POSE, "other": MATCH_POSE, "moved": MOVED_POSE, "turned": TURNED_POSE,
                    "backwards": BACKWARDS_POSE}[name]
            rendered = render(self.textures, camera, size, *pose)
            depth = rendered.depth if with_depth else None
            self._views[key] = extract_features(rendered.image, GeometryConfig(method=method), camera=camera,
                                                depth_image=depth)
        return self._views[key]

    def verify(self, query: str, match: str, method: str, *, query_depth: bool = False,
               match_depth: bool = False):
        return verify_features(self.view(query, method, query_depth), self.view(match, method, match_depth),
                               GeometryConfig(method=method))


@pytest.fixture(scope="module")
def room(data_dir: Path) -> Room:
    return Room(data_dir)


def rotation_error_deg(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(estimate @ truth.T)[0])))


def direction_error_deg(estimate: np.ndarray, truth: np.ndarray) -> float:
    cosine = estimate @ truth / np.linalg.norm(estimate) / np.linalg.norm(truth)
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def assert_valid_covariance(covariance: np.ndarray) -> None:
    assert covariance.shape == (6, 6) and covariance.dtype == np.float64
    assert np.allclose(covariance, covariance.T, rtol=0, atol=1e-12 * np.abs(covariance).max())
    assert np.linalg.eigvalsh(covariance).min() > -1e-9 * np.abs(covariance).max()


@pytest.mark.parametrize("method", ["orb", "sift"])
def test_monocular_views_give_rotation_and_translation_direction(room, method):
    rotation_true, translation_true = true_relative(*MOVED_POSE, *MATCH_POSE)
    result = room.verify("moved", "match", method)
    assert result.verified
    pose = result.relative
    assert pose.kind == UP_TO_SCALE and pose.inliers == result.inliers
    assert rotation_error_deg(pose.rotation, rotation_true) < 1.0
    assert direction_error_deg(pose.translation, translation_true) < 3.0
    assert np.linalg.norm(pose.translation) == pytest.approx(1.0)
    assert_valid_covariance(pose.covariance)
    # The length of the translation is unobserved; its perpendicular part and the rotation are not.
    t = pose.translation
    assert t @ pose.covariance[:3, :3] @ t >= UNOBSERVED_VARIANCE / 2
    perpendicular = np.linalg.svd(t[None])[2][1:]
    assert np.all(np.diag(perpendicular @ pose.covariance[:3, :3] @ perpendicular.T) < 1e-2)
    assert np.all(np.diag(pose.covariance)[3:] < np.radians(1.0) ** 2)


@pytest.mark.parametrize("side", ["match", "query"])
def test_depth_of_either_keyframe_gives_a_metric_pose(room, side):
    rotation_true, translation_true = true_relative(*MOVED_POSE, *MATCH_POSE)
    result = room.verify("moved", "match", "sift", query_depth=side == "query", match_depth=side == "match")
    pose = result.relative
    assert result.verified and pose.kind == METRIC
    assert rotation_error_deg(pose.rotation, rotation_true) < 1.0
    assert np.linalg.norm(pose.translation - translation_true) < 0.05 * np.linalg.norm(translation_true)
    assert_valid_covariance(pose.covariance)
    assert np.all(np.diag(pose.covariance)[:3] < 0.05**2)


def test_a_camera_turning_on_the_spot_gives_a_rotation_only(room):
    rotation_true, _ = true_relative(*TURNED_POSE, *MATCH_POSE)
    result = room.verify("turned", "match", "sift")
    pose = result.relative
    assert result.verified and pose.kind == ROTATION_ONLY
    assert rotation_error_deg(pose.rotation, rotation_true) < 0.5
    assert np.array_equal(pose.translation, np.zeros(3))
    assert_valid_covariance(pose.covariance)
    assert np.array_equal(np.diag(pose.covariance)[:3], [UNOBSERVED_VARIANCE] * 3)
    assert np.all(np.diag(pose.covariance)[3:] < np.radians(0.5) ** 2)


def test_two_different_cameras_each_use_their_own_model(room):
    rotation_true, translation_true = true_relative(*MOVED_POSE, *MATCH_POSE)
    monocular = room.verify("moved", "other", "sift").relative
    assert monocular.kind == UP_TO_SCALE
    assert rotation_error_deg(monocular.rotation, rotation_true) < 1.0
    assert direction_error_deg(monocular.translation, translation_true) < 3.0
    metric = room.verify("moved", "other", "sift", match_depth=True).relative
    assert metric.kind == METRIC
    assert np.linalg.norm(metric.translation - translation_true) < 0.05 * np.linalg.norm(translation_true)


def test_unrelated_views_have_no_pose(room):
    result = room.verify("backwards", "match", "sift")
    assert not result.verified and result.relative is None
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 640, (200, 2)), rng.uniform(0, 640, (200, 2))
    assert estimate_relative_pose(*noise, CAMERA, CAMERA) is None
    none = RelativePose.none()
    assert none.kind == NONE and none.kind_name == "none" and none.quaternion() == (0.0, 0.0, 0.0, 1.0)
    assert np.array_equal(none.covariance, np.eye(6) * UNOBSERVED_VARIANCE)


def test_the_detector_carries_the_metric_pose_of_a_keyframe_with_depth(room):
    """The matched keyframe brings a depth image; the query is a plain monocular keyframe."""
    config = LoopConfig(
        exclude_recent_frames=0, exclude_recent_seconds=0.0, exclude_recent_distance_m=0.0,
        min_departure=0.0, consistency_k=1, consistency_n=1, geometric="sift",
    )
    detector = LoopDetector(config)
    desc = np.ones(8, np.float32)
    old = render(room.textures, CAMERA, SIZE, *MATCH_POSE)
    new = render(room.textures, CAMERA, SIZE, *MOVED_POSE)
    depth_mm = np.rint(old.depth * 1000).astype(np.uint16)
    assert detector.update(Keyframe(0, 0.0, desc, np.packbits(desc > 0), image=old.image,
                                    camera=CAMERA, depth=depth_mm)) is None
    loop = detector.update(Keyframe(1, 1.0, desc, np.packbits(desc > 0), image=new.image, camera=CAMERA))
    rotation_true, translation_true = true_relative(*MOVED_POSE, *MATCH_POSE)
    assert loop is not None and loop.match_id == 0 and loop.relative.kind == METRIC
    assert np.linalg.norm(loop.relative.translation - translation_true) < 0.05 * np.linalg.norm(translation_true)
    with pytest.raises(TypeError, match="CameraModel"):
        detector.update(Keyframe(2, 2.0, desc, np.packbits(desc > 0), image=new.image, camera=(500, 500)))


def test_covariance_matches_the_spread_of_noisy_estimates_in_the_match_frame():
    """Monte Carlo: 150 PnP estimates from exact points with 1 px noise on the query keypoints.

    The query camera, turned 40 degrees from the match camera, sees the points as a tall, narrow
    strip about 4 m away: a sideways shift of the camera along its own x axis is then hard to tell
    from a turn, so that is the long axis of the translation uncertainty. In the match frame it lies
    40 degrees from the match camera's x axis, so a covariance in the wrong frame points elsewhere.
    """
    rng = np.random.default_rng(7)
    count, trials, sigma = 80, 150, 1.0
    rotation_true = rotation(40.0, 3.0)
    translation_true = np.array([-3.0, 0.0, 1.0])  # the query camera's centre in the match frame
    query_exact = np.column_stack([rng.uniform(280, 360, count), rng.uniform(40, 440, count)])
    in_query = np.column_stack([CAMERA.normalize(query_exact), np.ones(count)]) * rng.uniform(4.0, 4.5, (count, 1))
    in_match = in_query @ rotation_true.T + translation_true
    zero = np.zeros(3)
    match_px = cv2.projectPoints(in_match, zero, zero, CAMERA.matrix(), None)[0].reshape(-1, 2)
    depth = in_match[:, 2]

    errors, predicted = [], []
    for _ in range(trials):
        query_px = query_exact + rng.normal(0.0, sigma, query_exact.shape)
        pose = estimate_relative_pose(query_px, match_px, CAMERA, CAMERA, match_depth=depth)
        assert pose.kind == METRIC
        dtheta = cv2.Rodrigues(pose.rotation @ rotation_true.T)[0].ravel()
        errors.append(np.concatenate([pose.translation - translation_true, dtheta]))
        predicted.append(pose.covariance)
    empirical = np.cov(np.array(errors).T)
    predicted = np.mean(predicted, axis=0)
    for block in (slice(0, 3), slice(3, 6)):
        ratio = np.trace(predicted[block, block]) / np.trace(empirical[block, block])
        assert 0.5 < ratio < 2.0, (block, ratio)

    def axis_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.degrees(np.arccos(min(1.0, abs(float(a @ b))))))

    values, vectors = np.linalg.eigh(predicted[:3, :3])
    assert values[2] > 2 * values[1]  # clearly anisotropic
    axis_empirical = np.linalg.eigh(empirical[:3, :3])[1][:, -1]
    assert axis_angle_deg(vectors[:, -1], axis_empirical) < 20.0
    assert axis_angle_deg(vectors[:, -1], rotation_true[:, 0]) < 10.0  # the query camera's x axis
    # The same covariance read in the query camera's frame would be off by the 40 degree turn.
    assert axis_angle_deg(rotation_true.T @ vectors[:, -1], axis_empirical) > 30.0


def test_normalize_inverts_opencv_projection_for_both_lens_models():
    rng = np.random.default_rng(1)
    normalized = rng.uniform(-0.5, 0.5, (50, 2))
    rays = np.column_stack([normalized, np.ones(50)])
    zero = np.zeros(3)
    pixels = cv2.projectPoints(rays, zero, zero, OTHER_CAMERA.matrix(), np.array(OTHER_CAMERA.distortion))[0]
    assert np.allclose(OTHER_CAMERA.normalize(pixels.reshape(-1, 2)), normalized, atol=1e-6)
    fisheye = CameraModel.from_camera_info([300, 0, 320, 0, 300, 240, 0, 0, 1], [0.05, -0.01, 0.002, 0.0],
                                           "equidistant")
    distorted = cv2.fisheye.projectPoints(rays[:, None], zero, zero, fisheye.matrix(), np.array(fisheye.distortion))[0]
    assert np.allclose(fisheye.normalize(distorted.reshape(-1, 2)), normalized, atol=1e-6)


def test_camera_info_conversion_and_refusals():
    k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]
    camera = CameraModel.from_camera_info(k, [0.1, -0.2, 0.0, 0.0, 0.05], "plumb_bob")
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (500.0, 510.0, 320.0, 240.0)
    assert camera.distortion == (0.1, -0.2, 0.0, 0.0, 0.05) and not camera.fisheye
    assert len(CameraModel.from_camera_info(k, [0.0] * 8, "rational_polynomial").distortion) == 8
    assert CameraModel.from_camera_info(k, [], "").distortion == ()
    with pytest.raises(ValueError, match="uncalibrated"):
        CameraModel.from_camera_info([0.0] * 9, [], "plumb_bob")
    with pytest.raises(ValueError, match="fx"):
        CameraModel.from_camera_info([0.0, 0, 320, 0, 500, 240, 0, 0, 1], [], "plumb_bob")
    with pytest.raises(ValueError, match="'kannala_brandt'"):
        CameraModel.from_camera_info(k, [0.0] * 4, "kannala_brandt")
    with pytest.raises(ValueError, match="skew"):
        CameraModel.from_camera_info([500.0, 1.0, 320, 0, 500, 240, 0, 0, 1], [], "plumb_bob")
    with pytest.raises(ValueError, match="9 values"):
        CameraModel.from_camera_info(k[:6], [], "plumb_bob")
    with pytest.raises(ValueError, match="focal"):
        CameraModel(-1.0, 500.0, 320.0, 240.0)
    with pytest.raises(ValueError, match="finite"):
        CameraModel(500.0, 500.0, float("nan"), 240.0)
    with pytest.raises(ValueError, match="coefficients"):
        CameraModel(500.0, 500.0, 320.0, 240.0, (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="coefficients"):
        CameraModel(500.0, 500.0, 320.0, 240.0, (0.1,) * 5, fisheye=True)


def test_bad_points_are_refused():
    points = np.zeros((20, 2))
    with pytest.raises(ValueError, match="20 points but match_px has 19"):
        estimate_relative_pose(points, points[:19], CAMERA, CAMERA)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        estimate_relative_pose(np.zeros((20, 3)), np.zeros((20, 3)), CAMERA, CAMERA)
    with pytest.raises(ValueError, match="non-finite"):
        estimate_relative_pose(np.full((20, 2), np.nan), points, CAMERA, CAMERA)
    with pytest.raises(ValueError, match="match_depth has 3 values for 20 points"):
        estimate_relative_pose(points, points, CAMERA, CAMERA, match_depth=np.ones(3))
    assert estimate_relative_pose(points[:3], points[:3], CAMERA, CAMERA) is None
    with pytest.raises(ValueError, match="min_inliers"):
        RelativePoseConfig(min_inliers=4)
    with pytest.raises(ValueError, match="min_depth_m"):
        RelativePoseConfig(min_depth_m=5.0, max_depth_m=4.0)


def test_quaternion_is_x_y_z_w():
    pose = dataclasses.replace(RelativePose.none(), rotation=rotation(90.0))  # 90 degrees about y
    assert np.allclose(pose.quaternion(), (0.0, np.sqrt(0.5), 0.0, np.sqrt(0.5)))
