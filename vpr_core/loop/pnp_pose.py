"""The METRIC relative pose: PnP from the 3-D keypoints of the keyframe with depth to the other
keyframe's keypoints, refined and with its first-order covariance."""

from __future__ import annotations

import cv2
import numpy as np

from vpr_core.loop.pose_fit import REFINE_ROUNDS, homogeneous, parameter_covariance, project, rotate, symmetric
from vpr_core.loop.relative_pose import METRIC, MatchedView, RelativePose, RelativePoseConfig


def metric_pose(
    depth_view: MatchedView, image_view: MatchedView, config: RelativePoseConfig, *, depth_in_match: bool
) -> RelativePose | None:
    """PnP from the 3-D points of the view with depth to the keypoints of the other view."""
    known = np.flatnonzero(np.isfinite(depth_view.depth))
    points3d = homogeneous(depth_view.normalized[known]) * depth_view.depth[known, None]
    # Undistorted pixels (principal point at 0): OpenCV's PnP thresholds and its LM termination
    # are tuned for pixel-sized errors, and stop short of the minimum on normalized coordinates.
    observed = image_view.normalized[known] * image_view.focal
    camera = np.diag([image_view.focal[0], image_view.focal[1], 1.0])
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points3d,
        observed,
        camera,
        None,
        iterationsCount=config.pnp_iterations,
        reprojectionError=config.pnp_threshold_px,
        confidence=config.ransac_confidence,
    )
    if not ok or inliers is None or len(inliers) < config.min_inliers:
        return None
    # RANSAC judges inliers by a minimal-sample model, which is worst far from its sample, so it
    # tends to drop the points that constrain the pose most: refine, re-select, until stable.
    inliers = np.sort(inliers.ravel())
    for _ in range(REFINE_ROUNDS):
        rvec, tvec = cv2.solvePnPRefineLM(points3d[inliers], observed[inliers], camera, None, rvec, tvec)
        r_id, t_id = cv2.Rodrigues(rvec)[0], tvec.ravel()  # T_image_depth: x_image = R x_depth + t
        errors = np.linalg.norm(project(points3d @ r_id.T + t_id, image_view.focal) - observed, axis=1)
        selected = np.flatnonzero(errors < config.pnp_threshold_px)
        if np.array_equal(selected, inliers) or selected.size < config.min_inliers:
            break
        inliers = selected
    if selected.size < config.min_inliers:
        return None
    if depth_in_match:
        rotation, translation = r_id.T, -r_id.T @ t_id
    else:
        rotation, translation = r_id, t_id
    points3d, observed = points3d[inliers], observed[inliers]

    def residual(params: np.ndarray) -> np.ndarray:
        r = rotate(rotation, params[3:])
        t = translation + params[:3]
        # T_match_query perturbed; the points are mapped into the image view's camera.
        in_image = (points3d - t) @ r if depth_in_match else points3d @ r.T + t
        return (project(in_image, image_view.focal) - observed).ravel()

    covariance = parameter_covariance(residual, 6, config.min_sigma_px)
    if covariance is None:
        return None
    return RelativePose(METRIC, rotation, translation, symmetric(covariance), int(inliers.size))
