"""The camera's pose in the robot's base frame, from tf where tf2_ros is installed.

tf2_ros comes with every ROS 2 install but not with the PyPI wheels, so it is imported lazily: without
it (or with frames.use_tf false) the node uses the frames.base_to_camera parameter. A lookup is tried
at most once a second per camera frame until it succeeds; the result is kept, since a camera mount is
static for the run.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
from rclpy.node import Node
from rclpy.time import Time

RETRY_S = 1.0


def tf_available() -> bool:
    return importlib.util.find_spec("tf2_ros") is not None


class TfExtrinsics:
    def __init__(self, node: Node, base_frame: str) -> None:
        import tf2_ros

        self._node, self._base = node, base_frame
        self._errors = (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.ExtrapolationException)
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node)
        self._last_try: dict[str, float] = {}

    def lookup(self, camera_frame: str) -> np.ndarray | None:
        """Pose (x y z qx qy qz qw) of ``camera_frame`` in the base frame, or None (not yet in tf)."""
        now = time.monotonic()
        if not camera_frame or now - self._last_try.get(camera_frame, -RETRY_S) < RETRY_S:
            return None
        self._last_try[camera_frame] = now
        try:
            t = self._buffer.lookup_transform(self._base, camera_frame, Time()).transform
        except self._errors as exc:
            self._node.get_logger().warning(
                f"no tf from {self._base} to {camera_frame} yet ({exc}); using frames.base_to_camera meanwhile",
                throttle_duration_sec=10.0)
            return None
        return np.array([t.translation.x, t.translation.y, t.translation.z,
                         t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])
