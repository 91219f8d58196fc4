"""Our messages cross a process boundary over loopback with every field intact."""

import json
import math
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rosmsg_dict import to_dict

from conftest import python_process
from vpr_core import messages
from vpr_core.loop import relative_pose
from vpr_ros.msg import LoopClosure, PlaceMatchArray

MATCH = {
    "place_id": 18446744073709551615, "stamp": {"sec": 1700000000, "nanosec": 123456789},
    "image_name": "summer/images-00420.png", "score": 0.8671875, "hamming_distance": 97, "has_pose": True,
    "pose": {"position": {"x": 1.5, "y": -2.25, "z": 0.125},
             "orientation": {"x": 0.0, "y": 0.0, "z": 0.7071067811865476, "w": 0.7071067811865476}},
    "latitude": 63.4305149, "longitude": 10.3950528,
}
SPEC = {
    "matches": {
        "header": {"stamp": {"sec": 1700000001, "nanosec": 5}, "frame_id": "camera_front"},
        "source": "/camera/front/image_raw", "map_frame": "map", "accepted": True,
        "matches": [MATCH, dict(MATCH, place_id=7, has_pose=False, score=-0.25, hamming_distance=-1,
                                latitude=math.nan, longitude=math.nan, image_name="")],
        "latency_ms": 12.5,
    },
    "loop": {
        "header": {"stamp": {"sec": 42, "nanosec": 999999999}, "frame_id": "camera_front_optical"},
        "session_id": "20261201T120000-a1b2c3", "query_id": 311,
        "match_session_id": "20261201T120000-a1b2c3", "match_id": 12, "match_stamp": {"sec": 12, "nanosec": 34},
        "query_frame_id": "camera_front_optical", "match_frame_id": "camera_rear_optical",
        "score": 0.71875, "consistent_count": 3, "verification": LoopClosure.VERIFICATION_PASSED,
        "inlier_count": 87, "transform_type": LoopClosure.TRANSFORM_UP_TO_SCALE,
        "transform": {"translation": {"x": 0.6, "y": 0.0, "z": 0.8},
                      "rotation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}},
        "covariance": [float(v) for v in np.diag([1e6, 2e-3, 3e-3, 1e-4, 2e-4, 3e-4]).ravel()],
    },
}


def _same(received, expected, path=""):
    if isinstance(expected, dict):
        for key, value in expected.items():
            _same(received[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(received) == len(expected), path
        for i, (r, e) in enumerate(zip(received, expected)):
            _same(r, e, f"{path}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(received), path
    else:
        assert received == expected, f"{path}: {received!r} != {expected!r}"


def test_place_match_array_and_loop_closure_round_trip(ros_env):
    peer = python_process(["test/peer_messages.py", json.dumps(SPEC)], ros_env)
    rclpy.init()
    try:
        node = Node("message_checker")
        got = {}
        node.create_subscription(PlaceMatchArray, "peer/matches", lambda m: got.setdefault("matches", m), 10)
        node.create_subscription(LoopClosure, "peer/loop_closures", lambda m: got.setdefault("loop", m), 10)
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline and peer.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        rclpy.try_shutdown()
        peer.terminate()
        output = peer.communicate(timeout=10)[0]
    assert set(got) == {"matches", "loop"}, f"nothing received from the peer; its output:\n{output}"
    # float32 fields arrive as the float32 value of what was sent (the values above are exact in float32)
    assert np.float32(got["matches"].matches[0].score) == np.float32(MATCH["score"])
    _same(to_dict(got["matches"]), SPEC["matches"])
    _same(to_dict(got["loop"]), SPEC["loop"])


def test_the_constants_of_loop_closure_are_the_engines():
    """vpr_core fills LoopClosure without importing ROS, so its numbers must be the message's."""
    assert (relative_pose.NONE, relative_pose.ROTATION_ONLY, relative_pose.UP_TO_SCALE, relative_pose.METRIC) == (
        LoopClosure.TRANSFORM_NONE, LoopClosure.TRANSFORM_ROTATION_ONLY, LoopClosure.TRANSFORM_UP_TO_SCALE,
        LoopClosure.TRANSFORM_METRIC)
    assert relative_pose.UNOBSERVED_VARIANCE == LoopClosure.UNOBSERVED_VARIANCE
    assert (messages.VERIFICATION_NOT_RUN, messages.VERIFICATION_PASSED) == (
        LoopClosure.VERIFICATION_NOT_RUN, LoopClosure.VERIFICATION_PASSED)
