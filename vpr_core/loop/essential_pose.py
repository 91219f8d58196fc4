"""The monocular relative poses: UP_TO_SCALE from the essential matrix, or ROTATION_ONLY when a
pure rotation explains the matches (no parallax), each refined and with its first-order covariance."""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from vpr_core.loop.pose_fit import (
    REFINE_ROUNDS,
    homogeneous,
    jacobian,
    parameter_covariance,
    project,
    rotate,
    symmetric,
    unit,
)
from vpr_core.loop.relative_pose import (
    ROTATION_ONLY,
    UNOBSERVED_VARIANCE,
    UP_TO_SCALE,
    MatchedView,
    RelativePose,
    RelativePoseConfig,
)

_REFINE_STEPS = 10


def monocular_pose(query: MatchedView, match: MatchedView, config: RelativePoseConfig) -> RelativePose | None:
    count = query.normalized.shape[0]
    if count < config.min_inliers:
        return None
    focal = float(np.mean([np.mean(query.focal), np.mean(match.focal)]))
    threshold = config.ransac_threshold_px / focal
    essential, mask = cv2.findEssentialMat(
        query.normalized, match.normalized, np.eye(3), cv2.RANSAC, config.ransac_confidence, threshold
    )
    # Degenerate data gives no matrix or several stacked ones: then only a rotation can explain it.
    valid = essential is not None and essential.shape == (3, 3) and mask is not None
    candidates = mask.ravel() > 0 if valid else np.ones(count, bool)
    rotation_only = _rotation_only(query, match, candidates, config)
    if rotation_only is not None or not valid:
        return rotation_only
    # recoverPose keeps the inliers in front of both cameras: one physically possible pose.
    inliers, rotation, translation, pose_mask = cv2.recoverPose(
        essential, query.normalized, match.normalized, np.eye(3), mask=mask.copy()
    )
    if int(inliers) < config.min_inliers:
        return None
    chosen = pose_mask.ravel() > 0
    translation = translation.ravel() / np.linalg.norm(translation)
    return _up_to_scale(query, match, chosen, rotation, translation, config)


def _kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation R minimising sum |target - R source|² over unit vectors [N, 3]; by hand with numpy's
    SVD because OpenCV's 3-D estimators also fit a translation (and scale)."""
    u, _, vt = np.linalg.svd(source.T @ target)
    sign = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, sign]) @ u.T


def _rotation_errors(rotation: np.ndarray, query: MatchedView, match: MatchedView, rows: np.ndarray) -> np.ndarray:
    rotated = homogeneous(query.normalized[rows]) @ rotation.T
    return np.linalg.norm(project(rotated, match.focal) - match.normalized[rows] * match.focal, axis=1)


def _rotation_only(
    query: MatchedView, match: MatchedView, candidates: np.ndarray, config: RelativePoseConfig
) -> RelativePose | None:
    """The pure-rotation model, when its median error over ``candidates`` is below the threshold."""
    rows = np.flatnonzero(candidates)
    if rows.size < config.min_inliers:
        return None
    bearings_q = unit(homogeneous(query.normalized[rows]))
    bearings_m = unit(homogeneous(match.normalized[rows]))
    rotation = _kabsch(bearings_q, bearings_m)
    errors = _rotation_errors(rotation, query, match, rows)
    if not np.median(errors) < config.ransac_threshold_px:
        return None
    keep = errors < config.ransac_threshold_px
    inliers = rows[keep]
    if inliers.size < config.min_inliers:
        return None
    rotation = _kabsch(bearings_q[keep], bearings_m[keep])
    rays = homogeneous(query.normalized[inliers])
    observed = match.normalized[inliers] * match.focal

    def residual(dtheta: np.ndarray) -> np.ndarray:
        return (project(rays @ rotate(rotation, dtheta).T, match.focal) - observed).ravel()

    rotation_cov = parameter_covariance(residual, 3, config.min_sigma_px)
    if rotation_cov is None:
        return None
    covariance = np.eye(6) * UNOBSERVED_VARIANCE
    covariance[3:, 3:] = symmetric(rotation_cov)
    return RelativePose(ROTATION_ONLY, rotation, np.zeros(3), covariance, int(inliers.size))


def _sampson_px(essential: np.ndarray, query: MatchedView, match: MatchedView, rows: np.ndarray) -> np.ndarray:
    """Sampson distance of each match in pixels of the undistorted images.

    Written out because OpenCV's ``sampsonDistance`` takes one pair and one matrix for both images;
    here the gradient of x_mᵀ E x_q is taken with respect to each image's own pixels (1/fx, 1/fy),
    so two cameras with different focal lengths are weighted correctly.
    """
    x_q = homogeneous(query.normalized[rows])
    x_m = homogeneous(match.normalized[rows])
    e_xq = x_q @ essential.T
    et_xm = x_m @ essential
    gradient = np.concatenate([et_xm[:, :2] / query.focal, e_xq[:, :2] / match.focal], axis=1)
    return np.sum(x_m * e_xq, axis=1) / np.linalg.norm(gradient, axis=1)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _tangent(translation: np.ndarray) -> np.ndarray:
    """Orthonormal basis [3, 2] of the plane perpendicular to the unit vector ``translation``."""
    return np.linalg.svd(translation[None, :])[2][1:].T


def _essential_residual(
    rotation: np.ndarray, translation: np.ndarray, query: MatchedView, match: MatchedView, rows: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Sampson residuals (pixels) of ``rows`` as a function of the 5 free parameters: dθ and 2 on
    the tangent plane of the unit translation."""
    tangent = _tangent(translation)

    def residual(params: np.ndarray) -> np.ndarray:
        t = translation + tangent @ params[3:]
        essential = _skew(t / np.linalg.norm(t)) @ rotate(rotation, params[:3])
        return _sampson_px(essential, query, match, rows)

    return residual


def _refine_essential(
    rotation: np.ndarray, translation: np.ndarray, query: MatchedView, match: MatchedView, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton on the inliers' Sampson distances, starting from the RANSAC model.

    RANSAC returns the best minimal-sample model, which with a few hundred noisy keypoints can be
    off by degrees; OpenCV has no essential-matrix refinement, so these few steps are written here.
    A step that does not lower the cost ends the refinement.
    """
    residual = _essential_residual(rotation, translation, query, match, rows)
    cost = float(np.sum(residual(np.zeros(5)) ** 2))
    for _ in range(_REFINE_STEPS):
        jac = jacobian(residual, 5)
        step = -np.linalg.lstsq(jac, residual(np.zeros(5)), rcond=None)[0]
        t = translation + _tangent(translation) @ step[3:]
        new_rotation, new_translation = rotate(rotation, step[:3]), t / np.linalg.norm(t)
        new_residual = _essential_residual(new_rotation, new_translation, query, match, rows)
        new_cost = float(np.sum(new_residual(np.zeros(5)) ** 2))
        if not new_cost < cost:
            break
        rotation, translation, residual, cost = new_rotation, new_translation, new_residual, new_cost
    return rotation, translation


def _up_to_scale(
    query: MatchedView,
    match: MatchedView,
    chosen: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    config: RelativePoseConfig,
) -> RelativePose | None:
    rows = np.flatnonzero(chosen)
    everything = np.arange(query.normalized.shape[0])
    # As for PnP: RANSAC's inliers come from a minimal-sample model, so refine and re-select (by
    # Sampson distance, then in front of both cameras) until the inliers settle.
    for _ in range(REFINE_ROUNDS):
        rotation, translation = _refine_essential(rotation, translation, query, match, rows)
        essential = _skew(translation) @ rotation
        close = np.abs(_sampson_px(essential, query, match, everything)) < config.ransac_threshold_px
        mask = close.astype(np.uint8)[:, None]
        _, _, _, mask = cv2.recoverPose(essential, query.normalized, match.normalized, np.eye(3), mask=mask)
        selected = np.flatnonzero(mask.ravel() > 0)
        if np.array_equal(selected, rows) or selected.size < config.min_inliers:
            break
        rows = selected
    params_cov = parameter_covariance(
        _essential_residual(rotation, translation, query, match, rows), 5, config.min_sigma_px
    )
    if params_cov is None:
        return None
    # (dθ, δ) -> (dt, dθ) with dt = B δ to first order.
    to_pose = np.zeros((6, 5))
    to_pose[:3, 3:] = _tangent(translation)
    to_pose[3:, :3] = np.eye(3)
    covariance = to_pose @ params_cov @ to_pose.T
    covariance[:3, :3] += UNOBSERVED_VARIANCE * np.outer(translation, translation)
    return RelativePose(UP_TO_SCALE, rotation, translation, symmetric(covariance), int(rows.size))
