"""Test peer: a camera that publishes frames one at a time, each after the node answered the last.

Lock-step keeps every frame: with reliable QoS each frame is delivered once and finds the node idle,
so none is replaced in the node's latest-frame slot and the node sees every frame in order, as the
offline pipeline does; the node's results can then be compared one to one with it. A frame without
an answer within timeout_s fails the camera (it is never sent again: a second copy would reach a
sequence filter twice). The camera is also the listener: it prints, on its last line, the answers
it waited for and the loop closures it saw, as
``ANSWERS {"matches": {stamp_ns: {...}}, "loops": [[query_id, match_id], ...]}``, so no answer can
go out before the test's subscriber is there. Each answer holds rtt_ms, the time from sending the
frame to receiving its answer, which bounds the node's own latency_ms.

Usage: peer_camera.py JSON, with keys topic, answer_topic, loop_topic (optional), timeout_s, and the
frames: either images (paths), format ("raw" | "jpeg" | "png") and period_ns (stamps from start_ns,
1 s by default), or bag, whose CompressedImage messages on topic are sent unchanged.
"""

import json
import sys
import time
from pathlib import Path

import cv2
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image

from vpr_core.data.rosbag import open_bag
from vpr_ros.msg import LoopClosure, PlaceMatchArray


def image_message(path: str, fmt: str, stamp_ns: int):
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if fmt == "raw":
        msg = Image(height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8", step=bgr.shape[1] * 3,
                    data=bgr.tobytes())
    else:
        ok, data = cv2.imencode(f".{fmt}", bgr)
        assert ok, path
        msg = CompressedImage(format=fmt, data=data.tobytes())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "camera"
    return msg


def bag_messages(bag: str, topic: str) -> list[CompressedImage]:
    with open_bag(Path(bag)) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [deserialize_message(bytes(raw), CompressedImage)
                for _, _, raw in reader.messages(connections=connections)]


def frames(spec: dict) -> list:
    if "bag" in spec:
        return bag_messages(spec["bag"], spec["topic"])
    start = spec.get("start_ns", 1_000_000_000)
    return [image_message(path, spec["format"], start + i * spec["period_ns"])
            for i, path in enumerate(spec["images"])]


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def answer(msg: PlaceMatchArray, rtt_ms: float) -> dict:
    return {"ids": [m.place_id for m in msg.matches], "scores": [m.score for m in msg.matches],
            "accepted": msg.accepted, "source": msg.source, "latency_ms": msg.latency_ms, "rtt_ms": rtt_ms,
            "filtered": msg.filtered, "probability": msg.probability,
            "raw_ids": [m.place_id for m in msg.raw_matches],
            "poses_x": [m.pose.position.x if m.has_pose else None for m in msg.matches],
            "latitudes": [m.latitude for m in msg.matches]}


def main() -> int:
    spec = json.loads(sys.argv[1])
    rclpy.init()
    node = Node("peer_camera")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    messages = frames(spec)
    pub = node.create_publisher(type(messages[0]), spec["topic"], qos)
    answered: dict[int, dict] = {}
    loops: list[list[int]] = []
    sent_at: dict[int, float] = {}

    def on_answer(msg: PlaceMatchArray) -> None:
        stamp = stamp_ns(msg)
        answered[stamp] = answer(msg, (time.monotonic() - sent_at.get(stamp, float("nan"))) * 1e3)

    node.create_subscription(PlaceMatchArray, spec["answer_topic"], on_answer, qos)
    if spec.get("loop_topic"):
        node.create_subscription(LoopClosure, spec["loop_topic"],
                                 lambda msg: loops.append([msg.query_id, msg.match_id]), qos)
    while pub.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.1)
    for msg in messages:
        stamp = stamp_ns(msg)
        deadline = time.monotonic() + spec["timeout_s"]
        sent_at[stamp] = time.monotonic()
        pub.publish(msg)
        while stamp not in answered:
            if time.monotonic() > deadline:
                print(f"no answer for the frame stamped {stamp} ns", flush=True)
                return 1
            rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + 1.0  # a loop closure goes out just after its frame's answer
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(f"sent {len(messages)} frames", flush=True)
    print("ANSWERS " + json.dumps({"matches": answered, "loops": loops}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
