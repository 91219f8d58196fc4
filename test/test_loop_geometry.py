"""Geometric verification on real image pairs of the rtabmap_loop sequence."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_core.loop.geometry import GeometryConfig, extract_features, verify_features, verify_pair
from vpr_core.loop.camera_model import CameraModel
from vpr_core.loop.relative_pose import UP_TO_SCALE

# A revisit (frame 66 sees the corridor of frame 26 again) and two pairs that are not revisits:
# 64/48 look different, 79/26 are two corridor views (frame 79 revisits frames 37-41).
TRUE_PAIR = (66, 26)
FALSE_PAIRS = [(64, 48), (79, 26)]
# Rough pinhole guess for the 512x384 frames (about 60 degrees horizontal field of view); the sample
# data ships no calibration, and the essential matrix only needs a plausible one.
INTRINSICS = (440.0, 440.0, 256.0, 192.0)


@pytest.fixture(scope="module")
def frames(data_dir: Path) -> dict[int, np.ndarray]:
    """The RGB frames of the pairs above, read once. The pairs must agree with the set's ground truth
    (loop_pairs.csv): a precondition of the tests below, not a test of its own."""
    sequence = data_dir / "rtabmap_loop"
    with open(sequence / "loop_pairs.csv", newline="") as f:
        truth = {(int(r["query_frame"]), int(r["match_frame"])) for r in csv.DictReader(f)}
    assert TRUE_PAIR in truth and not truth & set(FALSE_PAIRS), "the chosen pairs disagree with loop_pairs.csv"
    out = {}
    for frame in {*TRUE_PAIR, *(i for pair in FALSE_PAIRS for i in pair)}:
        bgr = cv2.imread(str(sequence / "images" / f"{frame:04d}.jpg"))
        assert bgr is not None, f"frame {frame} of {sequence} is missing (see the data set's README)"
        out[frame] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out


@pytest.mark.parametrize("method", ["orb", "sift"])
def test_true_revisit_passes_and_other_places_fail(frames, method):
    config = GeometryConfig(method=method)
    good = verify_pair(frames[TRUE_PAIR[0]], frames[TRUE_PAIR[1]], config)
    assert good.verified
    assert good.inliers >= config.min_inliers
    assert good.inliers <= good.matches <= min(good.keypoints)
    assert good.relative is None  # no camera, no pose
    for query, match in FALSE_PAIRS:
        bad = verify_pair(frames[query], frames[match], config)
        assert not bad.verified, (query, match, bad.inliers)
        assert bad.inliers < config.min_inliers
        assert bad.inliers < good.inliers / 3


def test_essential_matrix_gives_a_consistent_relative_pose(frames):
    config = GeometryConfig(method="orb", intrinsics=INTRINSICS)
    query, match = (extract_features(frames[i], config) for i in TRUE_PAIR)
    forward = verify_features(query, match, config)
    backward = verify_features(match, query, config)
    assert forward.verified and backward.verified
    for result in (forward, backward):
        assert result.relative.kind == UP_TO_SCALE and result.relative.inliers == result.inliers
        rotation = result.relative.rotation
        assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-6)
        assert np.linalg.norm(result.relative.translation) == pytest.approx(1.0, abs=1e-6)
    # Swapping the views inverts the motion: R_ba should be R_ab transposed, up to RANSAC noise.
    residual = forward.relative.rotation @ backward.relative.rotation
    angle = np.degrees(np.arccos(np.clip((np.trace(residual) - 1.0) / 2.0, -1.0, 1.0)))
    assert angle < 5.0
    # ... and the camera centre of the other view moves the opposite way: t_ba ~ -R_ba t_ab.
    t_ab, t_ba = forward.relative.translation, backward.relative.translation
    assert float(np.dot(t_ba, -backward.relative.rotation @ t_ab)) > 0.9


def test_a_camera_on_the_features_replaces_the_intrinsics_and_depth_is_sampled(frames):
    config = GeometryConfig(method="orb")
    camera = CameraModel(*INTRINSICS)
    image = frames[TRUE_PAIR[0]]
    depth_mm = np.full(image.shape[:2], 2500, np.uint16)
    depth_mm[:, :100] = 0  # unknown
    features = extract_features(image, config, camera=camera, depth_image=depth_mm)
    left = features.points[:, 0] < 99.5
    assert np.isnan(features.depth[left]).all() and np.allclose(features.depth[~left], 2.5)
    metres = extract_features(image, config, depth_image=depth_mm.astype(np.float32) / 1000)
    assert np.array_equal(np.isnan(metres.depth), np.isnan(features.depth))
    match = extract_features(frames[TRUE_PAIR[1]], config, camera=camera)
    result = verify_features(features, match, config)
    assert result.verified and result.relative is not None
    with pytest.raises(ValueError, match="size"):
        extract_features(image, config, depth_image=depth_mm[:10])
    with pytest.raises(ValueError, match="uint16"):
        extract_features(image, config, depth_image=depth_mm.astype(np.int32))


def test_features_of_another_method_are_refused(frames):
    image = frames[TRUE_PAIR[0]]
    orb = extract_features(image, GeometryConfig(method="orb"))
    with pytest.raises(ValueError, match="sift"):
        verify_features(orb, orb, GeometryConfig(method="sift"))


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="method"):
        GeometryConfig(method="surf")
    with pytest.raises(ValueError, match="intrinsics"):
        GeometryConfig(intrinsics=(0.0, 440.0, 256.0, 192.0))
    with pytest.raises(ValueError, match="uint8"):
        extract_features(np.zeros((64, 64, 3), np.float32), GeometryConfig())
    with pytest.raises(ValueError, match="shape"):
        extract_features(np.zeros((64, 64, 4), np.uint8), GeometryConfig())


def test_blank_images_have_no_geometry(frames):
    blank = np.full((120, 160, 3), 128, np.uint8)
    result = verify_pair(blank, frames[TRUE_PAIR[0]], GeometryConfig())
    assert result.keypoints[0] == 0
    assert not result.verified and result.inliers == 0
