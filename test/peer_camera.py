"""Test peer: a camera that publishes image files one at a time, each after the node answered the last.

Lock-step keeps every frame (none replaced in the node's latest-frame slot), so the node's results
can be compared one to one with the offline pipeline. The camera is also the listener: it prints,
on its last line, the answers it waited for and the loop closures it saw, as
``ANSWERS {"matches": {stamp_ns: {...}}, "loops": [[query_id, match_id], ...]}``, so no answer can
go out before the test's subscriber is there. Usage: peer_camera.py JSON, with keys images (paths),
topic, format ("raw" | "jpeg" | "png"), answer_topic, loop_topic (optional), period_ns, timeout_s.
"""

import json
import sys
import time

import cv2
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

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


def main() -> int:
    spec = json.loads(sys.argv[1])
    rclpy.init()
    node = Node("peer_camera")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    kind = Image if spec["format"] == "raw" else CompressedImage
    pub = node.create_publisher(kind, spec["topic"], qos)
    answered: dict[int, dict] = {}
    loops: list[list[int]] = []

    def on_answer(msg: PlaceMatchArray) -> None:
        answered[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = {
            "ids": [m.place_id for m in msg.matches], "scores": [m.score for m in msg.matches],
            "accepted": msg.accepted, "source": msg.source, "latency_ms": msg.latency_ms}

    node.create_subscription(PlaceMatchArray, spec["answer_topic"], on_answer, qos)
    if spec.get("loop_topic"):
        node.create_subscription(LoopClosure, spec["loop_topic"],
                                 lambda msg: loops.append([msg.query_id, msg.match_id]), qos)
    while pub.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.1)
    for i, path in enumerate(spec["images"]):
        stamp = spec.get("start_ns", 1_000_000_000) + i * spec["period_ns"]
        msg = image_message(path, spec["format"], stamp)
        deadline = time.monotonic() + spec["timeout_s"]
        next_send = 0.0
        while stamp not in answered:
            if time.monotonic() > deadline:
                print(f"no answer for {path}", flush=True)
                return 1
            if time.monotonic() >= next_send:  # resend: a frame taken while the node was busy is replaced
                pub.publish(msg)
                next_send = time.monotonic() + 5.0
            rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + 1.0  # a loop closure goes out just after its frame's answer
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(f"sent {len(spec['images'])} frames", flush=True)
    print("ANSWERS " + json.dumps({"matches": answered, "loops": loops}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
