"""Pipeline results as the field layout of our ROS messages (PlaceMatchArray, LoopClosure).

Plain nested dicts, so that the one mapping from results to messages serves both the live node
(filled into rclpy messages) and `vpr replay --out-bag` (filled into rosbags messages) without
vpr_core importing ROS. The message definitions are in msg/*.msg.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:  # the pipeline (and torch) only for type hints
    from vpr_core.localizer import FrameResult, Match


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
            "latency_ms": latency_ms}


def loop_closure_fields(result: FrameResult, header: dict) -> dict[str, Any]:
    loop = result.loop
    fields = {
        "header": header, "query_id": loop.query_id, "match_id": loop.match_id,
        "match_stamp": time_fields(round(loop.match_stamp * 1e9)), "score": loop.score,
        "consistent_count": loop.consistent_count, "verification_run": loop.verified is not None,
        "verified": bool(loop.verified), "inlier_count": max(int(loop.inliers), 0),
        "has_transform": loop.rotation is not None and loop.translation_dir is not None,
        "transform": {"translation": {"x": 0.0, "y": 0.0, "z": 0.0},
                      "rotation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}},
    }
    if fields["has_transform"]:
        fields["transform"] = _transform_fields(loop.rotation, loop.translation_dir)
    return fields


def _transform_fields(rotation: np.ndarray, translation: np.ndarray) -> dict[str, Any]:
    # OpenCV gives the rotation vector; the quaternion follows from its axis and angle.
    rvec = cv2.Rodrigues(np.asarray(rotation, dtype=np.float64))[0].ravel()
    angle = float(np.linalg.norm(rvec))
    axis = rvec / angle if angle > 0 else np.zeros(3)
    qx, qy, qz = (float(a) * math.sin(angle / 2) for a in axis)
    tx, ty, tz = (float(t) for t in translation)
    return {"translation": {"x": tx, "y": ty, "z": tz},
            "rotation": {"x": qx, "y": qy, "z": qz, "w": math.cos(angle / 2)}}
