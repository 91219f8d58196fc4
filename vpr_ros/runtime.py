"""What the vpr_localizer node does, shared by the plain node and the managed (lifecycle) one.

Built in two steps so that a lifecycle node can map them onto its transitions: constructing the
runtime loads the model and the map, warms the encoder up and offers the outputs and services
(configure); ``start`` subscribes and starts the worker (activate); ``stop`` undoes that
(deactivate); ``close`` frees everything (cleanup).

Callbacks only convert the image and put it in its camera's latest-frame slot (a newer frame
replaces one not yet taken; that is counted as a drop), so they never wait for the model. One worker
thread takes the ready frames of all cameras as a batch, attaches what arrived meanwhile (odometry
interpolated at the image stamp, intrinsics, depth), runs the shared pipeline
(`vpr_core.localizer.Localizer`) and publishes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from vpr_core import poses
from vpr_core.data.frame import DataError, Frame
from vpr_core.data.ros_image import depth_msg_to_metres, image_msg_to_rgb
from vpr_core.debug_view import match_panel
from vpr_core.frame_result import FrameResult
from vpr_core.localizer import Localizer
from vpr_core.options import REFUSALS, refusal_line
from vpr_core.input_loss import UpstreamLoss
from vpr_core.loop.camera_model import CameraModel
from vpr_ros.conversion import loop_closure, place_match_array, pose_with_covariance, rgb_image, stamp_to_ns
from vpr_ros.extrinsics import TfExtrinsics, tf_available
from vpr_ros.msg import LoopClosure, PlaceMatchArray
from vpr_ros.parameters import ParameterError, checked_change, localizer_config, thresholds

LATENCY_WINDOW = 200
UPSTREAM_LOSS_WARN = 0.05  # share of a camera's frames lost before the node that turns diagnostics WARN
ODOM_MAX_SPAN_NS = 500_000_000        # two odometry messages further apart give no interpolated pose
ODOM_MAX_EXTRAPOLATION_NS = 100_000_000  # past the newest message, its pose stands in this long


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
    upstream: UpstreamLoss = field(default_factory=UpstreamLoss)  # frames the camera sent that never came


@dataclass
class Pending:
    rgb: np.ndarray
    header: Header
    received: float
    index: int


@dataclass
class CameraInputs:
    """What belongs to one camera besides its images."""

    info_topic: str = ""
    depth_topic: str = ""
    model: CameraModel | None = None
    depths: deque = field(default_factory=lambda: deque(maxlen=10))  # (stamp_ns, metres [H, W])


def camera_info_sibling(image_topic: str) -> str:
    """The image_transport convention: camera/image_raw[/compressed] -> camera/camera_info."""
    base = image_topic.rstrip("/")
    if base.endswith("/compressed"):
        base = base[: -len("/compressed")]
    head, _, _ = base.rpartition("/")
    return f"{head}/camera_info" if head or base.startswith("/") else "camera_info"


def sensor_qos(params: dict[str, Any], reliable: bool) -> QoSProfile:
    """A profile of our own (rclpy's shared qos_profile_sensor_data is never mutated)."""
    reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=params["qos_depth"], reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def offers_only_best_effort(node: Node, topic: str) -> bool:
    """Whether a publisher of ``topic`` offers best effort: a reliable subscription would not match it."""
    return any(info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
               for info in node.get_publishers_info_by_topic(topic))


class LocalizerRuntime:
    def __init__(self, node: Node, params: dict[str, Any]) -> None:
        self.node, self.params = node, params
        try:
            self.localizer = Localizer(localizer_config(params))
        except REFUSALS as exc:  # e.g. BackendUnavailable: the managed node's configure fails with the reason
            raise ParameterError(f"the model or map could not be loaded: {refusal_line(exc)}") from exc
        if params["frames.map"] and self.localizer.map is not None and params["frames.map"] != self.localizer.map_frame:
            raise ParameterError(f"parameter 'frames.map' = '{params['frames.map']}' differs from the frame of the "
                                 f"map's poses, '{self.localizer.map_frame}'; set it to '' or rebuild the map with "
                                 f"`vpr build-map --frame-id {params['frames.map']}`")
        self.localizer.warm_up()   # before subscribing: the first frame is answered at full speed
        self.name = node.get_fully_qualified_name()
        self._lock = threading.Condition()  # guards the slots only: callbacks never wait for the model
        self._pipeline_lock = threading.Lock()  # the worker's batch against services and parameter changes
        self._slots: dict[str, Pending] = {}
        # cameras are named by their resolved topic (namespace applied) in results and diagnostics
        self._topics = [node.resolve_topic_name(t) for t in params["image_topics"]]
        self._stats = {topic: CameraStats() for topic in self._topics}
        self._cameras = self._camera_inputs()
        self._encode_ms: deque = deque(maxlen=LATENCY_WINDOW)
        self._search_ms: deque = deque(maxlen=LATENCY_WINDOW)
        self._errors = 0
        self._last_result: tuple[float, FrameResult] | None = None
        self._last_accepted: float | None = None
        self._odom: deque = deque(maxlen=2000)
        self._odom_frame = ""
        self._tf = None
        self._running = False
        self._worker: threading.Thread | None = None
        self._inputs: list = []
        self._subscriptions: dict[str, tuple] = {}  # camera topic -> (message type, callback, subscription)
        self._downgrade: set[str] = set()  # topics whose reliable subscription met a best-effort publisher
        self._timer = None

        self.pub_matches = node.create_publisher(PlaceMatchArray, "~/matches", 10)
        self.pub_pose = node.create_publisher(PoseWithCovarianceStamped, "~/pose", 10)
        self.pub_loops = node.create_publisher(LoopClosure, "~/loop_closures", 10)
        self.pub_diag = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_debug = (node.create_publisher(Image, "~/debug_image", 2) if params["publish_debug_image"] else None)
        self._services = [node.create_service(Trigger, "~/save_map", self._on_save_map),
                          node.create_service(Trigger, "~/reset", self._on_reset)]
        node.add_on_set_parameters_callback(self._on_set_parameters)

    def _camera_inputs(self) -> dict[str, CameraInputs]:
        topics = self._topics
        infos, depths = self.params["camera_info_topics"], self.params["depth_topics"]
        infos = ([camera_info_sibling(t) for t in topics] if infos == ["auto"] else
                 [""] * len(topics) if infos == ["none"] else infos)
        depths = [""] * len(topics) if depths == ["none"] else depths
        fixed = self.params["camera.intrinsics"]
        model = CameraModel(*fixed) if any(fixed) else None
        return {t: CameraInputs("" if model else i, d, model) for t, i, d in zip(topics, infos, depths)}

    # --- activation ------------------------------------------------------------------------------
    def start(self) -> None:
        node = self.node
        for topic in self._topics:
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            self._subscribe(kind, topic, lambda m, t=topic: self._on_image(t, m))
            inputs = self._cameras[topic]
            if inputs.info_topic:
                self._subscribe(CameraInfo, inputs.info_topic, lambda m, c=inputs: self._on_camera_info(c, m))
            if inputs.depth_topic:
                self._subscribe(Image, inputs.depth_topic, lambda m, c=inputs: self._on_depth(c, m))
        if self.params["odom_topic"]:
            self._inputs.append(node.create_subscription(Odometry, self.params["odom_topic"], self._on_odom, 50))
        if self.params["frames.use_tf"] and tf_available() and self._tf is None:
            self._tf = TfExtrinsics(node, self.params["frames.base"])
        self._timer = node.create_timer(self.params["diagnostics_period_s"], self._publish_diagnostics)
        self._running = True
        self._worker = threading.Thread(target=self._work, name="vpr_worker", daemon=True)
        self._worker.start()

    def _subscribe(self, kind, topic: str, callback) -> None:
        """A camera subscription with the reliability ``qos`` asks for. With auto: reliable (a best
        effort reader loses large frames in DDS: README "Frames lost before the node") unless the
        topic's publishers offer only best effort, now or when one appears later (then this
        subscription is replaced by a best-effort one, once)."""
        choice = self.params["qos"]
        reliable = choice == "reliable" or (choice == "auto" and not offers_only_best_effort(self.node, topic))
        events = None
        if choice == "auto" and reliable:
            events = SubscriptionEventCallbacks(incompatible_qos=lambda _info: self._downgrade.add(topic))
        subscription = self.node.create_subscription(kind, topic, callback, sensor_qos(self.params, reliable),
                                                     event_callbacks=events)
        self._inputs.append(subscription)
        self._subscriptions[topic] = (kind, callback, subscription)

    def _apply_downgrades(self) -> None:
        """Replaces the reliable subscriptions that met a best-effort publisher (qos auto); run by the
        diagnostics timer, outside the subscriptions' own callbacks."""
        while self._downgrade:
            topic = self._downgrade.pop()
            kind, callback, old = self._subscriptions[topic]
            self.node.destroy_subscription(old)
            self._inputs.remove(old)
            new = self.node.create_subscription(kind, topic, callback, sensor_qos(self.params, reliable=False))
            self._inputs.append(new)
            self._subscriptions[topic] = (kind, callback, new)
            self.node.get_logger().info(f"{topic}: its publisher offers best effort only; subscribed best effort "
                                        "(qos auto)")

    def stop(self) -> None:
        for entity in self._inputs:
            self.node.destroy_subscription(entity)
        self._inputs = []
        self._subscriptions = {}
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None
        with self._lock:
            self._running = False
            self._slots.clear()
            self._lock.notify()
        if self._worker is not None:
            self._worker.join(timeout=10)
            self._worker = None

    def close(self) -> None:
        self.stop()
        self.node.remove_on_set_parameters_callback(self._on_set_parameters)
        for service in self._services:
            self.node.destroy_service(service)
        for publisher in (self.pub_matches, self.pub_pose, self.pub_loops, self.pub_diag, self.pub_debug):
            if publisher is not None:
                self.node.destroy_publisher(publisher)
        for mapdb in (self.localizer.map, self.localizer.slam_map):
            if mapdb is not None:
                mapdb.close()

    # --- callbacks: cheap, never wait for the model ---------------------------------------------
    def _on_image(self, topic: str, msg) -> None:
        now = time.monotonic()
        stats = self._stats[topic]
        stats.received += 1
        stats.arrivals.append(now)
        stats.upstream.add(stamp_to_ns(msg.header.stamp))
        max_rate = self.params["max_rate_hz"]
        if max_rate > 0 and now - stats.last_taken < 1.0 / max_rate:
            stats.rate_limited += 1
            return
        try:
            rgb = image_msg_to_rgb(msg)
        except (DataError, ValueError) as exc:
            stats.malformed += 1
            self.node.get_logger().warning(f"{topic}: malformed image skipped: {exc}", throttle_duration_sec=5.0)
            return
        stats.last_taken = now
        with self._lock:
            if topic in self._slots:
                stats.dropped += 1
            self._slots[topic] = Pending(rgb, msg.header, now, stats.received - 1)
            self._lock.notify()

    def _on_camera_info(self, inputs: CameraInputs, msg: CameraInfo) -> None:
        try:
            model = CameraModel.from_camera_info(msg.k, msg.d, msg.distortion_model)
        except ValueError as exc:
            self.node.get_logger().warning(f"{inputs.info_topic}: CameraInfo not usable: {exc}",
                                           throttle_duration_sec=30.0)
            return
        inputs.model = model

    def _on_depth(self, inputs: CameraInputs, msg: Image) -> None:
        try:
            inputs.depths.append((stamp_to_ns(msg.header.stamp), depth_msg_to_metres(msg)))
        except DataError as exc:
            self.node.get_logger().warning(f"{inputs.depth_topic}: depth image skipped: {exc}",
                                           throttle_duration_sec=5.0)

    def _on_odom(self, msg: Odometry) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        try:
            pose = poses.as_pose([p.x, p.y, p.z, q.x, q.y, q.z, q.w], "odometry pose")
        except ValueError as exc:
            self.node.get_logger().warning(f"odometry message skipped: {exc}", throttle_duration_sec=5.0)
            return
        self._odom.append((stamp_to_ns(msg.header.stamp), pose))
        self._odom_frame = msg.header.frame_id

    # --- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and not self._slots:
                    self._lock.wait(timeout=0.5)
                if not self._running:
                    return
                topics = list(self._slots)[: self.params["model.max_batch"]]
                batch = [(t, self._slots.pop(t)) for t in topics]
            try:
                frames = [self._frame(topic, pending) for topic, pending in batch]
                with self._pipeline_lock:
                    results = self.localizer.process(frames)
                for (_, pending), result in zip(batch, results):
                    self._publish(pending, result)
            except Exception as exc:  # one bad batch must not stop the node
                if not self._running or not self.node.context.ok():
                    return  # shutting down: the batch in hand cannot be published any more, and that is no error
                self._errors += 1
                self.node.get_logger().error(f"processing failed: {exc}", throttle_duration_sec=5.0)

    def _frame(self, topic: str, pending: Pending) -> Frame:
        """The frame with what is known at its stamp, looked up now that more odometry has arrived."""
        stamp_ns = stamp_to_ns(pending.header.stamp)
        frame_id = pending.header.frame_id
        if self._tf is not None:
            extrinsic = self._tf.lookup(frame_id)
            if extrinsic is not None:
                self.localizer.set_extrinsic(topic, extrinsic)
        inputs = self._cameras[topic]
        depth = self._depth_at(inputs, stamp_ns)
        if depth is not None and depth.shape != pending.rgb.shape[:2]:
            self.node.get_logger().warning(
                f"{inputs.depth_topic}: depth image {depth.shape[1]}x{depth.shape[0]} is not registered to the "
                f"{pending.rgb.shape[1]}x{pending.rgb.shape[0]} images of {topic}; not used", throttle_duration_sec=30.0)
            depth = None
        return Frame(index=pending.index, rgb=pending.rgb, name=f"{topic}@{stamp_ns}", source=topic, camera=topic,
                     stamp_ns=stamp_ns, pose=self._pose_at(stamp_ns), pose_frame=self._odom_frame,
                     frame_id=frame_id, camera_model=inputs.model, depth=depth)

    def _pose_at(self, stamp_ns: int) -> np.ndarray | None:
        odom = list(self._odom)
        if not odom:
            return None
        return poses.interpolate(np.array([s for s, _ in odom]), np.stack([v for _, v in odom]), stamp_ns,
                                 max_span_ns=ODOM_MAX_SPAN_NS, max_extrapolation_ns=ODOM_MAX_EXTRAPOLATION_NS)

    def _depth_at(self, inputs: CameraInputs, stamp_ns: int) -> np.ndarray | None:
        limit = self.params["depth.max_time_diff_s"] * 1e9
        best = min(inputs.depths, key=lambda d: abs(d[0] - stamp_ns), default=None)
        return best[1] if best is not None and abs(best[0] - stamp_ns) <= limit else None

    def _publish(self, pending: Pending, result: FrameResult) -> None:
        done = time.monotonic()
        stats = self._stats[result.frame.camera]
        stats.processed += 1
        stats.done.append(done)
        self._encode_ms.append(result.encode_ms)
        self._search_ms.append(result.search_ms)
        self._last_result = (done, result)
        if result.accepted:
            self._last_accepted = done
        latency_ms = (done - pending.received) * 1e3
        map_frame = self.localizer.map_frame
        self.pub_matches.publish(place_match_array(result, pending.header, map_frame, latency_ms))
        if result.pose is not None:
            self.pub_pose.publish(pose_with_covariance(result, pending.header, map_frame))
        if result.loop is not None:
            self.pub_loops.publish(loop_closure(result, pending.header))
        if self.pub_debug is not None and self.pub_debug.get_subscription_count():
            self.pub_debug.publish(rgb_image(match_panel(result), pending.header))

    # --- services and parameters -----------------------------------------------------------------
    def _on_save_map(self, _request, response: Trigger.Response) -> Trigger.Response:
        with self._pipeline_lock:
            try:
                path, count = self.localizer.save_slam_map()
            except (ValueError, OSError) as exc:
                response.success, response.message = False, str(exc)
                return response
        response.success = True
        response.message = (f"saved {count} keyframes of session {self.localizer.session_id} in {path}; it loads "
                            f"as a prebuilt map with map.path:={path}")
        return response

    def _on_reset(self, _request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._slots.clear()
        with self._pipeline_lock:
            try:
                self.localizer.reset()
            except (ValueError, OSError) as exc:
                response.success, response.message = False, str(exc)
                return response
        response.success = True
        response.message = (f"new session {self.localizer.session_id} on an empty slam map (the previous one is "
                            "renamed to <path>.<time>): keyframes and loop-closure state cleared")
        return response

    def _on_set_parameters(self, changes: list) -> SetParametersResult:
        """`ros2 param set` of a threshold: the same checks as at start, effective on the next frame."""
        try:
            values = checked_change(self.params, {p.name: p.value for p in changes})
            with self._pipeline_lock:
                self.localizer.update_thresholds(**thresholds(values))
        except ValueError as exc:  # ParameterError is one
            return SetParametersResult(successful=False, reason=str(exc))
        self.params.update(values)
        return SetParametersResult(successful=True)

    # --- diagnostics -----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        self._apply_downgrades()
        now = time.monotonic()
        statuses = [self._pipeline_status(now)]
        if self.localizer.map is not None:
            statuses.append(self._localization_status(now))
        self.pub_diag.publish(DiagnosticArray(header=Header(stamp=self.node.get_clock().now().to_msg()),
                                              status=statuses))

    def _pipeline_status(self, now: float) -> DiagnosticStatus:
        status = DiagnosticStatus(name=f"{self.name}: pipeline", hardware_id=self.name)
        values = {"map places": self.localizer.map_size, "keyframes": self.localizer.keyframe_count,
                  "session": self.localizer.session_id, "processing errors": self._errors,
                  "slam keyframes not stored": self.localizer.slam_write_failures}
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
                f"{topic} malformed": s.malformed, f"{topic} lost upstream": s.upstream.lost,
                f"{topic} intrinsics": "known" if self._cameras[topic].model is not None else "unknown"})
            if s.malformed:
                problems.append(f"{s.malformed} malformed on {topic}")
            upstream = s.upstream.estimate()
            if upstream.loss_ratio > UPSTREAM_LOSS_WARN:
                problems.append(f"{topic}: {100 * upstream.loss_ratio:.0f} % of the camera's frames never arrived "
                                f"({upstream.lost} of {upstream.received + upstream.lost}; a best-effort "
                                "subscription loses large images: qos reliable or auto)")
        if self.localizer.map_unavailable:  # frames are published unlocalized until it answers again
            problems.append(f"map database unreachable: {self.localizer.map_unavailable}")
        # A slam map that cannot be written loses keyframes while matches still flow: an ERROR until a
        # keyframe is stored again, then a WARN with the count, so a passing disk problem stays visible.
        failing = self.localizer.slam_write_error
        if failing:
            problems.insert(0, failing)
        elif self.localizer.slam_write_failures:
            problems.append(f"{self.localizer.slam_write_failures} slam keyframes were not stored")
        status.level = (DiagnosticStatus.ERROR if failing else
                        DiagnosticStatus.WARN if problems or self._errors else DiagnosticStatus.OK)
        status.message = "; ".join(problems) if problems else "running"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return status

    def _localization_status(self, now: float) -> DiagnosticStatus:
        """OK while the newest processed frame is an accepted localization, WARN ("not localized") else."""
        status = DiagnosticStatus(name=f"{self.name}: localization", hardware_id=self.name)
        since = "never" if self._last_accepted is None else f"{now - self._last_accepted:.1f} s ago"
        if self._last_result is None:
            status.level, status.message = DiagnosticStatus.WARN, "not localized: no frame processed yet"
        else:
            result = self._last_result[1]
            best = result.matches[0] if result.matches else None
            if result.accepted:
                status.level = DiagnosticStatus.OK
                status.message = f"localized: place {best.place_id}, score {best.score:.3f}"
            else:
                status.level = DiagnosticStatus.WARN
                status.message = ("not localized: " + (f"best score {best.score:.3f}" if best else "no match")
                                  + f", last accepted {since}")
        status.values = [KeyValue(key="last accepted", value=since)]
        return status


def _rate(times: deque, now: float, window: float = 5.0) -> float:
    recent = [t for t in times if now - t <= window]
    return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
