"""How much the ROS node costs on top of the bare encoder (issue: node overhead budget).

Prints, from one run on one machine:
  - bare encoder images/s (batch 1, the node's case with one camera),
  - node processed images/s while a camera publishes faster than the encoder can follow, and the
    ratio node / bare (goal >= 0.90),
  - the same ratio against the bare encoder measured under the same camera load: the encoder in a
    process of its own while the camera publishes at the same rate to a process that only receives
    the frames. On a 2-core machine the camera and the transport take CPU from whatever encodes, so
    this ratio is what the node itself costs; the first one also counts the camera's share,
  - the node's added latency (receive to publish, minus encode) relative to encode time, with the
    camera paced at half the encoder's rate so that no frame waits for the one before (goal <= 0.10).

Usage: .venv/bin/python bench/node_overhead.py [--backend auto] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from vpr_core.build_map import BuildConfig, build_map  # noqa: E402
from vpr_core.cli_options import NORDLAND_CHECKPOINT  # noqa: E402
from vpr_core.data import open_dataset  # noqa: E402
from vpr_core.engine import EncoderConfig, create_encoder  # noqa: E402
from vpr_ros.msg import PlaceMatchArray  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))


SINK = """
import sys, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("bench_sink")
node.create_subscription(Image, "/bench/image_raw", lambda msg: None,
                         QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
rclpy.spin(node)
"""


def bare_worker(seconds: float, backend: str) -> int:
    """Child process: the bare encoder rate, printed as one number."""
    dataset = open_dataset(f"vpr_bench:{DATA / 'corridor'}")
    images = [f.rgb for f in list(dataset.queries)[:30]]
    encoder = create_encoder(EncoderConfig(checkpoint=str(NORDLAND_CHECKPOINT), backend=backend))
    rate, _ = bare_encoder_rate(encoder, images, seconds)
    print(f"{rate:.3f}", flush=True)
    return 0


def bare_encoder_rate(encoder, images: list[np.ndarray], seconds: float) -> tuple[float, float]:
    """Images/s and median ms of encode() on one image at a time."""
    for image in images[:3]:
        encoder.encode([image])
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        encoder.encode([images[len(times) % len(images)]])
        times.append(time.perf_counter() - t)
    return len(times) / (time.perf_counter() - start), float(np.median(times) * 1e3)


class Camera:
    """Publishes bgr8 frames at a fixed rate from a thread; collects the node's answers and diagnostics."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.node = Node("bench_camera")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Image, "/bench/image_raw", qos)
        self.msgs = []
        for rgb in images:
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            self.msgs.append(Image(height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8",
                                   step=bgr.shape[1] * 3, data=bgr.tobytes()))
        self.answers: list[tuple[float, float]] = []  # (arrival time, latency_ms)
        self.encode_ms: list[float] = []
        self.node.create_subscription(PlaceMatchArray, "/vpr_localizer/matches",
                                      lambda m: self.answers.append((time.monotonic(), m.latency_ms)), qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        values = {kv.key: kv.value for kv in msg.status[0].values}
        if "encode ms p50" in values:
            self.encode_ms.append(float(values["encode ms p50"]))

    def run(self, rate_hz: float, seconds: float, until=None) -> tuple[float, list[float]]:
        """Publishes for `seconds` (or until ``until()`` is true); returns (answers/s, latencies) of
        that window."""
        stop = threading.Event()

        def publish() -> None:
            i, period, next_t = 0, 1.0 / rate_hz, time.monotonic()
            while not stop.is_set():
                msg = self.msgs[i % len(self.msgs)]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
                self.pub.publish(msg)
                i += 1
                next_t += period
                time.sleep(max(0.0, next_t - time.monotonic()))

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        start = time.monotonic()
        while time.monotonic() - start < seconds and not (until and until()):
            rclpy.spin_once(self.node, timeout_sec=0.02)
        stop.set()
        thread.join()
        # skip the first 20% (warm-up) of the window
        window = [a for a in self.answers if a[0] >= start + 0.2 * seconds]
        self.answers.clear()
        span = (window[-1][0] - window[0][0]) if len(window) > 1 else float("nan")
        return (len(window) - 1) / span, [lat for _, lat in window]


def loaded_bare_rate(camera: Camera, rate_hz: float, args: argparse.Namespace, env: dict) -> float:
    """The bare encoder's images/s in a child process while the camera publishes at ``rate_hz`` to a
    process that only receives (the node's load without the node)."""
    sink = subprocess.Popen([sys.executable, "-c", SINK], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        while camera.pub.get_subscription_count() == 0 and sink.poll() is None:
            rclpy.spin_once(camera.node, timeout_sec=0.1)
        worker = subprocess.Popen([sys.executable, __file__, "--bare-worker", "--seconds", str(args.seconds),
                                   "--backend", args.backend], env=env, stdout=subprocess.PIPE, text=True)
        camera.run(rate_hz, args.seconds + 30.0, until=lambda: worker.poll() is not None)
        return float(worker.communicate(timeout=60)[0].split()[-1])
    finally:
        sink.terminate()
        sink.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        return bare_worker(args.seconds, args.backend)

    dataset = open_dataset(f"vpr_bench:{DATA / 'corridor'}")
    images = [f.rgb for f in list(dataset.queries)[:30]]
    encoder = create_encoder(EncoderConfig(checkpoint=str(NORDLAND_CHECKPOINT), backend=args.backend))
    with tempfile.TemporaryDirectory() as tmp:
        map_dir = Path(tmp) / "map"
        build_map(dataset.database, map_dir, encoder, BuildConfig())
        bare_rate, bare_ms = bare_encoder_rate(encoder, images, args.seconds)
        print(f"bare encoder ({args.backend}, lite0, {images[0].shape[1]}x{images[0].shape[0]}): "
              f"{bare_rate:.1f} images/s, {bare_ms:.1f} ms per image")

        env = dict(os.environ, ROS_LOG_DIR=str(Path(tmp) / "log"), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   ROS_DOMAIN_ID=str(50 + os.getpid() % 50))
        os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
        node = subprocess.Popen(
            [sys.executable, "-m", "vpr_ros.localize_node", "--ros-args", "-p", f"map.path:={map_dir}",
             "-p", "image_topics:=['/bench/image_raw']", "-p", f"model.backend:={args.backend}",
             "-p", "qos:=reliable", "-p", "diagnostics_period_s:=0.5"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        rclpy.init()
        try:
            camera = Camera(images)
            while camera.pub.get_subscription_count() == 0 and node.poll() is None:
                rclpy.spin_once(camera.node, timeout_sec=0.1)
            over_rate = 2.0 * bare_rate
            node_rate, _ = camera.run(over_rate, args.seconds)
            paced_rate = 0.5 * bare_rate
            camera.encode_ms.clear()
            _, latencies = camera.run(paced_rate, args.seconds)
            encode_ms = float(np.median(camera.encode_ms)) if camera.encode_ms else float("nan")
            node.terminate()
            node.wait(timeout=30)
            loaded_rate = loaded_bare_rate(camera, over_rate, args, env)
        finally:
            rclpy.try_shutdown()
            if node.poll() is None:
                node.terminate()
                node.wait(timeout=30)
    latency = float(np.median(latencies))
    added = latency - encode_ms
    print(f"node, camera at {over_rate:.1f} Hz (2x the encoder): {node_rate:.1f} images/s processed; "
          f"node / bare = {node_rate / bare_rate:.2f} (goal >= 0.90)")
    print(f"bare encoder in its own process while the camera publishes at {over_rate:.1f} Hz to a receiver: "
          f"{loaded_rate:.1f} images/s; node / loaded bare = {node_rate / loaded_rate:.2f} (goal >= 0.90)")
    print(f"node, camera at {paced_rate:.1f} Hz: receive-to-publish p50 {latency:.1f} ms, encode p50 "
          f"{encode_ms:.1f} ms, added {added:.1f} ms; added / encode = {added / encode_ms:.2f} (goal <= 0.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
