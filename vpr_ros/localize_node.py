"""Node `vpr_localizer`: camera topics in, place matches and loop-closure candidates out.

Callbacks only convert the image and put it in its camera's latest-frame slot (a newer frame
replaces one not yet taken; that is counted as a drop), so they never wait for the model. One worker
thread takes the ready frames of all cameras as a batch and runs the shared pipeline
(`vpr_core.localizer.Localizer`), then publishes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from vpr_core.data.frame import DataError, Frame
from vpr_core.data.ros_image import image_msg_to_rgb
from vpr_core.data.rosbag import Track
from vpr_core.debug_view import match_panel
from vpr_core.localizer import FrameResult, Localizer
from vpr_ros.conversion import loop_closure, place_match_array, rgb_image, stamp_to_ns
from vpr_ros.msg import LoopClosure, PlaceMatchArray
from vpr_ros.parameters import ParameterError, declare, localizer_config

LATENCY_WINDOW = 200


@dataclass
class CameraStats:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    rate_limited: int = 0
    malformed: int = 0
    last_taken: float = -1e18
    arrivals: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    done: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


@dataclass
class Pending:
    frame: Frame
    header: Header
    received: float


class LocalizerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("vpr_localizer", **kwargs)
        self.params = declare(self)
        try:
            self.localizer = Localizer(localizer_config(self.params))
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise ParameterError(f"the model or map could not be loaded: {exc}") from exc
        self.localizer.warm_up()   # before subscribing: the first frame is answered at full speed
        self.get_logger().info(
            "parameters: " + ", ".join(f"{k}={v!r}" for k, v in self.params.items()))

        self._lock = threading.Condition()  # guards the slots only: callbacks never wait for the model
        self._pipeline_lock = threading.Lock()  # the worker's batch against ~/reset
        self._slots: dict[str, Pending] = {}
        self._stats = {topic: CameraStats() for topic in self.params["image_topics"]}
        self._encode_ms: deque = deque(maxlen=LATENCY_WINDOW)
        self._search_ms: deque = deque(maxlen=LATENCY_WINDOW)
        self._errors = 0
        self._odom: deque = deque(maxlen=2000)
        self._running = True

        self.pub_matches = self.create_publisher(PlaceMatchArray, "~/matches", 10)
        self.pub_loops = self.create_publisher(LoopClosure, "~/loop_closures", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_debug = (self.create_publisher(Image, "~/debug_image", 2)
                          if self.params["publish_debug_image"] else None)
        qos = qos_profile_sensor_data if self.params["qos"] == "sensor_data" else \
            QoSProfile(depth=self.params["qos_depth"], reliability=ReliabilityPolicy.RELIABLE)
        if self.params["qos"] == "sensor_data":
            qos.depth = self.params["qos_depth"]
        for topic in self.params["image_topics"]:
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self.create_subscription(kind, topic, lambda msg, t=topic: self._on_image(t, msg), qos)
        if self.params["odom_topic"]:
            self.create_subscription(Odometry, self.params["odom_topic"], self._on_odom, 50)
        self.create_service(Trigger, "~/save_map", self._on_save_map)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(self.params["diagnostics_period_s"], self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="vpr_worker", daemon=True)
        self._worker.start()

    # --- callbacks: cheap, never wait for the model ---------------------------------------------
    def _on_image(self, topic: str, msg) -> None:
        now = time.monotonic()
        stats = self._stats[topic]
        stats.received += 1
        stats.arrivals.append(now)
        max_rate = self.params["max_rate_hz"]
        if max_rate > 0 and now - stats.last_taken < 1.0 / max_rate:
            stats.rate_limited += 1
            return
        try:
            rgb = image_msg_to_rgb(msg)
        except (DataError, ValueError) as exc:
            stats.malformed += 1
            self.get_logger().warning(f"{topic}: malformed image skipped: {exc}", throttle_duration_sec=5.0)
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        frame = Frame(index=stats.received - 1, rgb=rgb, name=f"{topic}@{stamp_ns}", source=topic,
                      camera=topic, stamp_ns=stamp_ns, pose=self._pose_at(stamp_ns))
        stats.last_taken = now
        with self._lock:
            if topic in self._slots:
                stats.dropped += 1
            self._slots[topic] = Pending(frame, msg.header, now)
            self._lock.notify()

    def _on_odom(self, msg: Odometry) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        self._odom.append((stamp_to_ns(msg.header.stamp), np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])))

    def _pose_at(self, stamp_ns: int) -> np.ndarray | None:
        """Pose of the odometry message nearest in time (within 0.5 s), else unknown."""
        odom = list(self._odom)
        if not odom:
            return None
        track = Track(self.params["odom_topic"], np.array([s for s, _ in odom]), np.stack([v for _, v in odom]))
        return track.nearest(stamp_ns, max_gap_ns=500_000_000)

    # --- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and not self._slots:
                    self._lock.wait(timeout=0.5)
                if not self._running:
                    return
                topics = list(self._slots)[: self.params["model.max_batch"]]
                batch = [self._slots.pop(t) for t in topics]
            try:
                with self._pipeline_lock:
                    results = self.localizer.process([p.frame for p in batch])
            except Exception as exc:  # one bad batch must not stop the node
                self._errors += 1
                self.get_logger().error(f"processing failed: {exc}", throttle_duration_sec=5.0)
                continue
            for pending, result in zip(batch, results):
                self._publish(pending, result)

    def _publish(self, pending: Pending, result: FrameResult) -> None:
        done = time.monotonic()
        stats = self._stats[pending.frame.camera]
        stats.processed += 1
        stats.done.append(done)
        self._encode_ms.append(result.encode_ms)
        self._search_ms.append(result.search_ms)
        latency_ms = (done - pending.received) * 1e3
        self.pub_matches.publish(place_match_array(result, pending.header, self.localizer.map_frame, latency_ms))
        if result.loop is not None:
            self.pub_loops.publish(loop_closure(result, pending.header))
        if self.pub_debug is not None and self.pub_debug.get_subscription_count():
            self.pub_debug.publish(rgb_image(match_panel(result), pending.header))

    # --- services and diagnostics ----------------------------------------------------------------
    def _on_save_map(self, _request, response: Trigger.Response) -> Trigger.Response:
        if self.localizer.slam_map is None:
            response.success, response.message = False, "mode is localization: the prebuilt map is read-only"
        elif not self.params["map.slam_path"]:
            response.success, response.message = False, "map.slam_path is empty: keyframes are kept in memory only"
        else:
            # Every keyframe append is committed atomically, so what is on disk is already complete.
            response.success = True
            response.message = f"{self.localizer.keyframe_count} keyframes in {self.params['map.slam_path']}"
        return response

    def _on_reset(self, _request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._slots.clear()
        with self._pipeline_lock:
            try:
                self.localizer.reset()
                response.success, response.message = True, "keyframes and loop-closure state cleared"
            except (ValueError, OSError) as exc:
                response.success, response.message = False, str(exc)
        return response

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        status = DiagnosticStatus(name="vpr_localizer", hardware_id="vpr_localizer")
        values = {"map places": self.localizer.map_size, "keyframes": self.localizer.keyframe_count,
                  "processing errors": self._errors}
        for name, ms in (("encode", self._encode_ms), ("search", self._search_ms)):
            if ms:
                values[f"{name} ms p50"] = f"{np.percentile(ms, 50):.2f}"
                values[f"{name} ms p95"] = f"{np.percentile(ms, 95):.2f}"
        problems = []
        for topic, s in self._stats.items():
            values.update({
                f"{topic} input Hz": f"{_rate(s.arrivals, now):.2f}",
                f"{topic} processed Hz": f"{_rate(s.done, now):.2f}",
                f"{topic} received": s.received, f"{topic} processed": s.processed,
                f"{topic} dropped": s.dropped, f"{topic} rate limited": s.rate_limited,
                f"{topic} malformed": s.malformed})
            if s.malformed:
                problems.append(f"{s.malformed} malformed on {topic}")
        status.level = DiagnosticStatus.WARN if problems or self._errors else DiagnosticStatus.OK
        status.message = "; ".join(problems) if problems else "running"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                              status=[status]))

    def shutdown(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify()
        self._worker.join(timeout=10)


def _rate(times: deque, now: float, window: float = 5.0) -> float:
    recent = [t for t in times if now - t <= window]
    return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv)
    try:
        node = LocalizerNode()
    except ParameterError as exc:
        rclpy.logging.get_logger("vpr_localizer").error(f"not started: {exc}")
        rclpy.try_shutdown()
        return 2
    # One executor thread: callbacks never block (the model runs in the worker), and rclpy's
    # multi-threaded executor spends enough time in Python per wake-up to starve the worker of the
    # GIL: with a 190 Hz camera the node processed 9.8 frames/s with it and 71.8 with this one.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
