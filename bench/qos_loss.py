"""Frames received of those a camera published, per subscription QoS profile and frame size.

    python bench/qos_loss.py                       # 100 frames at 10 Hz, 320x240 / 640x480 / 1280x720
    python bench/qos_loss.py --frames 300 --rate 30

A publisher process sends raw bgr8 images with a reliable publisher (what image_transport and most
camera drivers offer) on loopback; this process subscribes with the node's two profiles (sensor_data:
best effort; reliable), depth qos_depth, and counts what arrives. It also prints what
vpr_core/input_loss.py estimates from the arriving stamps alone, the figure the node reports in
/diagnostics, against the true loss. Each run gets a ROS domain of its own (loopback only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpr_core.input_loss import UpstreamLoss  # noqa: E402

SIZES = ((320, 240), (640, 480), (1280, 720))
PROFILES = ("sensor_data", "reliable")
TOPIC = "/bench/image_raw"


def _qos(profile: str, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability = ReliabilityPolicy.BEST_EFFORT if profile == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability)


def publish(spec: dict) -> int:
    """The camera: waits for the subscriber, then publishes ``frames`` images at ``rate`` Hz."""
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_camera")
    pub = node.create_publisher(Image, TOPIC, _qos("reliable", spec["depth"]))
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)  # discovery of the reverse direction
    width, height = spec["size"]
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    period = 1.0 / spec["rate"]
    start = time.monotonic()
    for n in range(spec["frames"]):
        msg = Image(height=height, width=width, encoding="bgr8", step=width * 3, data=pixels)
        stamp_ns = 10**9 + int(n * period * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        pub.publish(msg)
        time.sleep(max(0.0, start + (n + 1) * period - time.monotonic()))
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def measure(profile: str, size: tuple[int, int], args: argparse.Namespace, env: dict[str, str]) -> dict:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_subscriber")
    loss, received = UpstreamLoss(), []

    def on_image(msg: Image) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        received.append(stamp)
        loss.add(stamp)

    node.create_subscription(Image, TOPIC, on_image, _qos(profile, args.depth))
    spec = {"size": size, "frames": args.frames, "rate": args.rate, "depth": args.depth}
    camera = subprocess.Popen([sys.executable, __file__, "--publish", json.dumps(spec)], env=env)
    try:
        while camera.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.02)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.02)
    finally:
        camera.wait(timeout=60)
        node.destroy_node()
        rclpy.shutdown()
    estimate = loss.estimate()
    return {"profile": profile, "size": f"{size[0]}x{size[1]}", "received": len(set(received)),
            "estimated_lost": estimate.lost, "true_lost": args.frames - len(set(received))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--depth", type=int, default=5, help="history depth of both sides (the node's qos_depth)")
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish:
        return publish(json.loads(args.publish))
    rows = []
    for n, (profile, size) in enumerate((p, s) for s in SIZES for p in PROFILES):
        env = dict(os.environ, ROS_DOMAIN_ID=str(1 + (os.getpid() + n) % 100), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   RMW_IMPLEMENTATION=os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"))
        os.environ.update(env)
        rows.append(measure(profile, size, args, env))
    print(f"date {time.strftime('%Y-%m-%d')}; {args.frames} frames at {args.rate:g} Hz, bgr8, reliable publisher, "
          f"depth {args.depth}, {os.environ['RMW_IMPLEMENTATION']}, loopback; load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| subscription | frame | received | lost (true) | lost (estimated from stamps) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['profile']} | {r['size']} | {r['received']} / {args.frames} | {r['true_lost']} | "
              f"{r['estimated_lost']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
