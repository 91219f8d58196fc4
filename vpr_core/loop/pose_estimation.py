"""Estimation of a loop closure's relative pose from matched keypoints: metric via PnP when one
keyframe has depth, else from the essential matrix (see ``relative_pose`` for the kinds and the
covariance convention)."""

from __future__ import annotations

import numpy as np

from vpr_core.loop.camera_model import CameraModel, pixel_points
from vpr_core.loop.essential_pose import monocular_pose
from vpr_core.loop.pnp_pose import metric_pose
from vpr_core.loop.relative_pose import MatchedView, RelativePose, RelativePoseConfig


def estimate_relative_pose(
    query_px: np.ndarray,
    match_px: np.ndarray,
    query_camera: CameraModel,
    match_camera: CameraModel,
    *,
    query_depth: np.ndarray | None = None,
    match_depth: np.ndarray | None = None,
    config: RelativePoseConfig | None = None,
) -> RelativePose | None:
    """T_match_query from N matched keypoints (``query_px[i]`` and ``match_px[i]``, pixels [N, 2]).

    ``match_depth``/``query_depth`` (metres [N], NaN or <= 0 unknown) make the result METRIC via
    PnP, the matched keyframe's depth first. Otherwise the essential matrix is fitted to the
    undistorted normalized coordinates (each view through its own camera). Model selection between
    UP_TO_SCALE and ROTATION_ONLY: a pure rotation is fitted (Kabsch) to the bearing vectors of the
    essential matrix's inliers; when its median reprojection error is below ``ransac_threshold_px``
    the rotation alone explains the data, the translation cannot be seen and the kind is
    ROTATION_ONLY. None when no model has ``min_inliers`` inliers or the data is degenerate.
    """
    config = RelativePoseConfig() if config is None else config
    query, match = pixel_points(query_px, "query_px"), pixel_points(match_px, "match_px")
    if query.shape[0] != match.shape[0]:
        raise ValueError(f"query_px has {query.shape[0]} points but match_px has {match.shape[0]}")
    count = query.shape[0]
    query_depth = _depths(query_depth, count, "query_depth", config)
    match_depth = _depths(match_depth, count, "match_depth", config)
    query_view = MatchedView(query_camera.normalize(query), query_camera.focal(), query_depth)
    match_view = MatchedView(match_camera.normalize(match), match_camera.focal(), match_depth)

    if _enough_depth(match_depth, config):
        pose = metric_pose(match_view, query_view, config, depth_in_match=True)
        if pose is not None:
            return pose
    if _enough_depth(query_depth, config):
        pose = metric_pose(query_view, match_view, config, depth_in_match=False)
        if pose is not None:
            return pose
    return monocular_pose(query_view, match_view, config)


def _depths(depth: np.ndarray | None, count: int, name: str, config: RelativePoseConfig) -> np.ndarray | None:
    """Depth [N] with NaN wherever it is unknown or outside the configured range."""
    if depth is None:
        return None
    array = np.asarray(depth, dtype=np.float64).ravel().copy()
    if array.size != count:
        raise ValueError(f"{name} has {array.size} values for {count} points")
    with np.errstate(invalid="ignore"):
        valid = (array >= config.min_depth_m) & (array <= config.max_depth_m)
    array[~valid] = np.nan
    return array


def _enough_depth(depth: np.ndarray | None, config: RelativePoseConfig) -> bool:
    return depth is not None and int(np.count_nonzero(np.isfinite(depth))) >= config.min_depth_points
