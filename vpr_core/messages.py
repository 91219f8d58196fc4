"""Pipeline results as the field layout of our messages (PlaceMatchArray, LoopClosure) and of the
pose output (geometry_msgs/PoseWithCovarianceStamped).

Plain nested dicts, so that the one mapping from results to messages serves both the live node
(filled into rclpy messages) and `vpr replay --out-bag` (filled into rosbags messages) without
vpr_core importing ROS. The message definitions are in msg/*.msg.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_core.loop.relative_pose import NONE as TRANSFORM_NONE
from vpr_core.loop.relative_pose import UNOBSERVED_VARIANCE

if TYPE_CHECKING:  # the pipeline (and torch) only for type hints
    from vpr_core.frame_result import FrameResult, Match


# LoopClosure.VERIFICATION_* (msg/LoopClosure.msg); the TRANSFORM_* values are vpr_core.loop.relative_pose's.
VERIFICATION_NOT_RUN, VERIFICATION_PASSED = 0, 1


def time_fields(ns: int) -> dict[str, int]:
    return {"sec": int(ns // 1_000_000_000), "nanosec": int(ns % 1_000_000_000)}


def _pose_fields(values) -> dict[str, Any]:
    x, y, z, qx, qy, qz, qw = (float(v) for v in values)
    return {"position": {"x": x, "y": y, "z": z}, "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}


def place_match_fields(match: Match) -> dict[str, Any]:
    rec = match.record
    return {
        "place_id": match.place_id, "stamp": time_fields(rec.stamp_ns), "image_name": rec.source,
        "score": match.score, "hamming_distance": match.hamming, "has_pose": rec.pose is not None,
        "pose": _pose_fields(rec.pose if rec.pose is not None else (0.0,) * 7),
        "latitude": rec.latlon[0] if rec.latlon else math.nan,
        "longitude": rec.latlon[1] if rec.latlon else math.nan,
    }


def place_match_array_fields(result: FrameResult, header: dict, map_frame: str, latency_ms: float) -> dict[str, Any]:
    return {"header": header, "source": result.frame.camera, "map_frame": map_frame,
            "accepted": result.accepted, "matches": [place_match_fields(m) for m in result.matches],
            "filtered": result.filtered,
            "probability": result.probability if result.probability is not None else math.nan,
            "raw_matches": [place_match_fields(m) for m in result.raw_matches],
            "latency_ms": latency_ms}


def loop_closure_fields(result: FrameResult, header: dict) -> dict[str, Any]:
    """LoopClosure version 2: the edge T_match_query between the two keyframes' camera frames."""
    loop = result.loop
    relative = loop.relative
    kind = relative.kind if relative is not None else TRANSFORM_NONE
    if relative is None:
        rotation, translation = np.eye(3), np.zeros(3)
        covariance = np.diag([UNOBSERVED_VARIANCE] * 6)
    else:
        rotation, translation, covariance = relative.rotation, relative.translation, relative.covariance
    return {
        "header": header, "session_id": result.session_id, "query_id": loop.query_id,
        "match_session_id": result.session_id, "match_id": loop.match_id,
        "match_stamp": time_fields(round(loop.match_stamp * 1e9)),
        "query_frame_id": header["frame_id"], "match_frame_id": result.loop_match_frame,
        "score": loop.score, "consistent_count": loop.consistent_count,
        "verification": VERIFICATION_NOT_RUN if loop.verified is None else VERIFICATION_PASSED,
        "inlier_count": max(int(loop.inliers), 0), "transform_type": kind,
        "transform": _transform_fields(rotation, translation),
        "covariance": [float(v) for v in np.asarray(covariance, dtype=np.float64).reshape(36)],
    }


def pose_with_covariance_fields(result: FrameResult, header: dict) -> dict[str, Any]:
    """geometry_msgs/PoseWithCovarianceStamped of an accepted localization (``result.pose``)."""
    estimate = result.pose
    return {"header": header, "pose": {"pose": _pose_fields(estimate.pose),
                                       "covariance": [float(v) for v in estimate.covariance.reshape(36)]}}


def _transform_fields(rotation: np.ndarray, translation: np.ndarray) -> dict[str, Any]:
    qx, qy, qz, qw = (float(q) for q in Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).as_quat())
    tx, ty, tz = (float(t) for t in translation)
    return {"translation": {"x": tx, "y": ty, "z": tz}, "rotation": {"x": qx, "y": qy, "z": qz, "w": qw}}
