"""Test peer: a camera that streams synthetic frames at a fixed rate with a chosen reliability.

Usage: peer_stream.py JSON with keys topic, reliability ("reliable" | "best_effort"), width, height,
frames, rate_hz, timeout_s. It waits until a subscription matches its publisher (so a subscriber that
cannot match it, or matches late, is visible as a timeout), then publishes and prints "SENT n".
"""

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main() -> int:
    spec = json.loads(sys.argv[1])
    rclpy.init()
    node = rclpy.create_node("peer_stream")
    reliability = ReliabilityPolicy.RELIABLE if spec["reliability"] == "reliable" else ReliabilityPolicy.BEST_EFFORT
    pub = node.create_publisher(Image, spec["topic"], QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                                                                 reliability=reliability))
    deadline = time.monotonic() + spec["timeout_s"]
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print("NO SUBSCRIBER", flush=True)
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)
    width, height = spec["width"], spec["height"]
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    period = 1.0 / spec["rate_hz"]
    start = time.monotonic()
    for n in range(spec["frames"]):
        msg = Image(height=height, width=width, encoding="bgr8", step=width * 3, data=pixels)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(10**9 + int(n * period * 1e9), 10**9)
        pub.publish(msg)
        time.sleep(max(0.0, start + (n + 1) * period - time.monotonic()))
    time.sleep(1.0)
    print(f"SENT {spec['frames']}", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
