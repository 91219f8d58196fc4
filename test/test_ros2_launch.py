"""The node as a robotics engineer runs it: `ros2 launch vpr_ros localize.launch.py` from the colcon
install (scripts/ros2_exec.sh), real bags played into it, and the real `ros2 param`, `ros2 service`
and `ros2 lifecycle` commands. This process listens to ~/matches, ~/pose, ~/loop_closures and
/diagnostics like a SLAM or navigation stack would.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from conftest import REPO
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.cli_options import DEFAULT_CHECKPOINT
from vpr_core.data import open_dataset, open_source
from vpr_core.data.bag_writer import CameraInfoStream, ImageStream, PoseStream, stamps_at, write_bag
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.mapdb import MapDB
from vpr_ros.msg import LoopClosure, PlaceMatchArray

ROS2 = str(REPO / "scripts" / "ros2_exec.sh")
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
PLACES = 40
QUERIES = 40
START_NS = 1_700_000_000 * 1_000_000_000
INTRINSICS = (440.0, 440.0, 256.0, 192.0)  # rough guess for rtabmap_loop's 512x384 frames (no calibration ships)


def place_pose(i: float) -> np.ndarray:
    """Ground truth of the test map: the camera at x = i metres, axes of the map frame."""
    return np.array([float(i), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])


def ros2(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([ROS2, "ros2", *args], env=env, capture_output=True, text=True, timeout=timeout)


def launch(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([ROS2, "ros2", "launch", "vpr_ros", "localize.launch.py", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def play(env: dict, bag: Path, rate: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vpr_ros.bag_player", str(bag), "--rate", str(rate), "--reliable",
                             "--wait-for-subscribers", "60"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop(process: subprocess.Popen) -> str:
    """Ctrl-C to the launch (it forwards it to the node), then the output."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # launch passes it on to the node once
    try:
        return process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0]


class Listener:
    """Collects what the node publishes, keyed by the image stamp."""

    def __init__(self) -> None:
        self.node = Node("slam_backend_stand_in")
        self.matches: dict[int, PlaceMatchArray] = {}
        self.poses: dict[int, PoseWithCovarianceStamped] = {}
        self.loops: list[LoopClosure] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.sub_matches = self.node.create_subscription(
            PlaceMatchArray, "/vpr_localizer/matches", lambda m: self.matches.setdefault(_ns(m.header.stamp), m),
            RELIABLE)
        self.node.create_subscription(PoseWithCovarianceStamped, "/vpr_localizer/pose",
                                      lambda m: self.poses.setdefault(_ns(m.header.stamp), m), RELIABLE)
        self.initial_poses: dict[int, PoseWithCovarianceStamped] = {}  # where AMCL listens
        self.node.create_subscription(PoseWithCovarianceStamped, "/initialpose",
                                      lambda m: self.initial_poses.setdefault(_ns(m.header.stamp), m), RELIABLE)
        self.node.create_subscription(LoopClosure, "/vpr_localizer/loop_closures", self.loops.append, RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def spin_until(self, done, *processes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                return
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def wait_for_node(self, process, timeout: float = 120) -> None:
        self.spin_until(lambda: self.sub_matches.get_publisher_count() > 0, process, timeout=timeout)
        assert self.sub_matches.get_publisher_count() > 0, "the launched node never published:\n" + stop(process)

    def diagnostic_values(self, status_suffix: str) -> dict[str, str]:
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.endswith(status_suffix):
                    return {kv.key: kv.value for kv in status.values} | {"message": status.message}
        return {}


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture
def ros(ros_env):
    """This process as a ROS node, and the `ros2` daemon of the test's domain (as after a user's first
    `ros2` command), so that each `ros2 param` / `ros2 lifecycle` call finds the node at once."""
    started = ros2(ros_env, "daemon", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    rclpy.init()
    try:
        yield Listener()
    finally:
        rclpy.try_shutdown()
        ros2(ros_env, "daemon", "stop")


@pytest.fixture(scope="module")
def posed_corridor(data_dir, tmp_path_factory):
    """A map built from a bag with an odometry topic (Corridor reference frames, the camera driving
    along x at 1 m per frame, odometry at 20 Hz), and a bag of query frames."""
    root = tmp_path_factory.mktemp("posed_corridor")
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    refs = [f.rgb for f in list(dataset.database)[:PLACES]]
    image_stamps = stamps_at(2.0, PLACES, start_ns=START_NS)
    odom_stamps = stamps_at(20.0, 20 * PLACES // 2 + 5, start_ns=START_NS - 100_000_000)
    odom = np.stack([place_pose((t - START_NS) * 2e-9) for t in odom_stamps])
    map_bag = write_bag(root / "mapping", [ImageStream("/camera/image_raw", refs, image_stamps),
                                           PoseStream("/odom", odom, odom_stamps, frame_id="map")])
    encoder = create_encoder(EncoderConfig(checkpoint=str(DEFAULT_CHECKPOINT), backend="onnxruntime"))
    build_map(open_source(f"rosbag:{map_bag}"), root / "map", encoder, BuildConfig())
    queries = [f.rgb for f in list(dataset.queries)[:QUERIES]]
    query_bag = write_bag(root / "queries", [ImageStream("/camera/image_raw", queries,
                                                         stamps_at(2.0, QUERIES, start_ns=START_NS + 10**12))])
    late_bag = write_bag(root / "late", [ImageStream("/camera/image_raw", queries[:8],
                                                     stamps_at(2.0, 8, start_ns=START_NS + 2 * 10**12))])
    return {"map": root / "map", "queries": query_bag, "late": late_bag, "dataset": dataset}


def test_launch_localization_publishes_matches_and_poses_and_takes_thresholds_at_run_time(ros, ros_env,
                                                                                           posed_corridor):
    c = posed_corridor
    stored = MapDB.load(c["map"])
    np.testing.assert_allclose(np.array(stored.records([7])[0].pose), place_pose(7), atol=1e-9)  # interpolated
    stored.close()
    node = launch(ros_env, f"map:={c['map']}", "qos:=reliable", "backend:=onnxruntime", "use_sim_time:=False",
                  "pose_topic:=/initialpose")
    try:
        ros.wait_for_node(node)
        player = play(ros_env, c["queries"], rate=2.0)
        ros.spin_until(lambda: len(ros.matches) >= QUERIES, node, timeout=180)
        player.communicate(timeout=60)
        assert len(ros.matches) == QUERIES, stop(node)

        accepted = {s: m for s, m in ros.matches.items() if m.accepted}
        assert len(accepted) >= QUERIES // 3
        ros.spin_until(lambda: set(ros.initial_poses) >= set(accepted), node, timeout=10)
        assert set(ros.initial_poses) == set(accepted)  # a pose for every accepted match, none otherwise
        assert not ros.poses  # remapped from ~/pose by the launch argument pose_topic
        for stamp, msg in accepted.items():
            best, pose = msg.matches[0], ros.initial_poses[stamp]
            assert pose.header.frame_id == "map" == msg.map_frame
            got = pose.pose.pose
            np.testing.assert_allclose([got.position.x, got.position.y, got.position.z, got.orientation.x,
                                        got.orientation.y, got.orientation.z, got.orientation.w],
                                       place_pose(best.place_id), atol=1e-6)
            covariance = np.array(pose.pose.covariance).reshape(6, 6)
            assert covariance[0, 0] >= 2.0 ** 2 and np.allclose(covariance, np.diag(np.diag(covariance)))
        correct = sum(m.matches[0].place_id in c["dataset"].positives(i)
                      for i, (_, m) in enumerate(sorted(ros.matches.items())))
        assert correct >= QUERIES // 2

        def processed() -> str:
            return ros.diagnostic_values("/vpr_localizer: pipeline").get("/camera/image_raw processed", "")

        ros.spin_until(lambda: processed() == str(QUERIES), node, timeout=10)
        assert processed() == str(QUERIES)
        assert ros.diagnostic_values("/vpr_localizer: localization")["message"].startswith(("localized", "not loc"))

        ok = ros2(ros_env, "param", "set", "/vpr_localizer", "localization.min_score", "1.0")
        assert ok.returncode == 0 and "successful" in ok.stdout, ok.stdout + ok.stderr
        bad = ros2(ros_env, "param", "set", "/vpr_localizer", "localization.min_score", "5.0")
        assert "failed: parameter 'localization.min_score' = 5.0 must be in [-1.0, 1.0]" in bad.stderr, bad.stderr
        frozen = ros2(ros_env, "param", "set", "/vpr_localizer", "mode", "slam")
        assert "failed" in frozen.stderr and "read-only" in frozen.stderr, frozen.stdout + frozen.stderr
        value = ros2(ros_env, "param", "get", "/vpr_localizer", "localization.min_score")
        assert "1.0" in value.stdout, value.stdout + value.stderr

        before = set(ros.matches)
        play(ros_env, c["late"], rate=2.0).communicate(timeout=120)
        ros.spin_until(lambda: len(ros.matches) >= len(before) + 8, node, timeout=60)
        late = [m for s, m in ros.matches.items() if s not in before]
        assert len(late) == 8 and not any(m.accepted for m in late)  # the new threshold took effect
        assert set(ros.initial_poses) == set(accepted)
    finally:
        output = stop(node)
    assert "[vpr_localizer]" in output or "vpr_localizer" in output


def test_launch_slam_mode_starts_with_nothing_but_the_defaults(ros, ros_env):
    node = launch(ros_env, "mode:=slam", "backend:=onnxruntime")
    try:
        ros.wait_for_node(node)
        ros.spin_until(lambda: ros.diagnostic_values(": pipeline"), node, timeout=30)
        assert ros.diagnostic_values("/vpr_localizer: pipeline")["keyframes"] == "0"
    finally:
        output = stop(node)
    assert "not started" not in output and "mode='slam'" in output


def _rtabmap_bag(data_dir: Path, root: Path) -> tuple[Path, list[int], set[tuple[int, int]]]:
    sequence = data_dir / "rtabmap_loop"
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((sequence / "images").glob("*.jpg"))]
    stamps = stamps_at(1.0, len(images), start_ns=START_NS)
    with open(sequence / "loop_pairs.csv", newline="") as f:
        truth = {(int(r["query_frame"]), int(r["match_frame"])) for r in csv.DictReader(f)}
    bag = write_bag(root / "rtabmap", [
        ImageStream("/camera/image_raw", images, stamps, frame_id="camera_optical"),
        # One message a second ahead too: a driver publishes its camera info from the start, and the node,
        # which takes the latest one per camera, must not meet the first image before any.
        CameraInfoStream("/camera/camera_info", INTRINSICS, (512, 384),
                         np.concatenate([[stamps[0] - 1_000_000_000], stamps - 1_000_000]), frame_id="camera_optical"),
    ])
    return bag, stamps.tolist(), truth


def test_launch_slam_publishes_loop_closure_edges_and_saves_a_map_that_loads(ros, ros_env, data_dir, tmp_path):
    bag, stamps, truth = _rtabmap_bag(data_dir, tmp_path)
    frame_of = {s: i for i, s in enumerate(stamps)}
    params = yaml.safe_load((REPO / "config" / "localize.yaml").read_text())
    values = params["/**/vpr_localizer"]["ros__parameters"]
    values.update({"mode": "slam", "loop.geometric": "orb", "keyframe.min_interval_s": 0.0,
                   "keyframe.max_similarity": 1.0, "qos": "reliable", "qos_depth": 50})
    params_file = tmp_path / "slam.yaml"
    params_file.write_text(yaml.safe_dump(params))
    slam_path = tmp_path / "slam_map"
    node = launch(ros_env, f"params_file:={params_file}", f"slam_path:={slam_path}", "backend:=onnxruntime")
    try:
        ros.wait_for_node(node)
        player = play(ros_env, bag, rate=4.0)
        ros.spin_until(lambda: player.poll() is not None, node, timeout=240)
        ros.spin_until(lambda: len(ros.matches) >= len(stamps), node, timeout=5.0)
        assert len(ros.matches) >= 0.9 * len(stamps), f"{len(ros.matches)} of {len(stamps)} frames answered"
        assert ros.loops, stop(node)
        pairs = [(frame_of[_ns(m.header.stamp)], frame_of[_ns(m.match_stamp)]) for m in ros.loops]
        true_pairs = [p for p in pairs if p in truth]
        assert len(true_pairs) >= 5 and len(true_pairs) >= 0.8 * len(pairs), pairs
        sessions = {m.session_id for m in ros.loops}
        assert len(sessions) == 1 and sessions == {m.match_session_id for m in ros.loops} and "" not in sessions
        for m in ros.loops:
            assert m.query_id > m.match_id and m.query_frame_id == m.match_frame_id == "camera_optical"
            assert m.verification == LoopClosure.VERIFICATION_PASSED and m.inlier_count >= 30
            assert m.transform_type in (LoopClosure.TRANSFORM_ROTATION_ONLY, LoopClosure.TRANSFORM_UP_TO_SCALE)
            covariance = np.array(m.covariance).reshape(6, 6)
            assert np.allclose(covariance, covariance.T) and np.all(np.linalg.eigvalsh(covariance) > -1e-9)
            t = m.transform.translation
            if m.transform_type == LoopClosure.TRANSFORM_UP_TO_SCALE:
                direction = np.array([t.x, t.y, t.z])
                assert np.linalg.norm(direction) == pytest.approx(1.0, abs=1e-6)
                assert direction @ covariance[:3, :3] @ direction >= LoopClosure.UNOBSERVED_VARIANCE / 2
            else:
                assert np.allclose(np.diag(covariance)[:3], LoopClosure.UNOBSERVED_VARIANCE)

        saved = ros2(ros_env, "service", "call", "/vpr_localizer/save_map", "std_srvs/srv/Trigger")
        assert "success=True" in saved.stdout and str(slam_path) in saved.stdout, saved.stdout + saved.stderr
        mapdb = MapDB.load(slam_path)
        assert mapdb.size == len(ros.matches) and f"saved {mapdb.size} keyframes" in saved.stdout
        mapdb.close()

        session = sessions.pop()
        reset = ros2(ros_env, "service", "call", "/vpr_localizer/reset", "std_srvs/srv/Trigger")
        assert "success=True" in reset.stdout and session not in reset.stdout, reset.stdout + reset.stderr
        ros.spin_until(lambda: ros.diagnostic_values(": pipeline").get("session", session) != session, node,
                       timeout=10)
        assert ros.diagnostic_values(": pipeline")["session"] in reset.stdout
    finally:
        stop(node)


def test_managed_node_follows_its_lifecycle_transitions(ros, ros_env, posed_corridor):
    node = launch(ros_env, "managed:=true", f"map:={posed_corridor['map']}", "qos:=reliable",
                  "backend:=onnxruntime")
    camera = ros.node.create_publisher(Image, "/camera/image_raw", RELIABLE)
    frame = next(iter(posed_corridor["dataset"].queries)).rgb

    def state() -> str:
        """The node's state as `ros2 lifecycle get` reports it. Each call is a new process that discovers
        the graph anew, and may not see the node yet though this process does: it asks again then."""
        deadline = time.monotonic() + 30
        while True:
            result = ros2(ros_env, "lifecycle", "get", "/vpr_localizer")
            if result.stdout or "Node not found" not in result.stderr or time.monotonic() > deadline:
                return result.stdout.split()[0] if result.stdout else result.stderr

    def transition(name: str) -> None:
        result = ros2(ros_env, "lifecycle", "set", "/vpr_localizer", name)
        assert "Transitioning successful" in result.stdout, result.stdout + result.stderr

    def answered(stamp_s: int, timeout: float) -> bool:
        msg = Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8", step=frame.shape[1] * 3,
                    data=frame.tobytes())
        msg.header.stamp.sec = stamp_s
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and stamp_s * 10**9 not in ros.matches:
            camera.publish(msg)
            ros.spin_until(lambda: stamp_s * 10**9 in ros.matches, node, timeout=1.0)
        return stamp_s * 10**9 in ros.matches

    try:
        ros.spin_until(lambda: "vpr_localizer" in ros.node.get_node_names(), node, timeout=60)
        assert state() == "unconfigured", stop(node)
        transition("configure")
        assert not answered(11, timeout=2.0)  # configured, not active: no subscription yet
        transition("activate")
        assert answered(12, timeout=30.0)
        transition("deactivate")
        assert state() == "inactive"
        assert not answered(13, timeout=2.0)
        transition("cleanup")
        assert state() == "unconfigured"
    finally:
        output = stop(node)
    assert "configured: model and map loaded" in output


def test_tf_gives_the_camera_extrinsic_where_tf2_ros_is_installed(ros):
    tf2_ros = pytest.importorskip("tf2_ros", reason="tf2_ros is not on PyPI; it comes with a ROS 2 install")
    from geometry_msgs.msg import TransformStamped

    from vpr_ros.extrinsics import TfExtrinsics

    broadcaster = tf2_ros.StaticTransformBroadcaster(ros.node)
    transform = TransformStamped()
    transform.header.frame_id, transform.child_frame_id = "base_link", "camera_optical"
    transform.transform.translation.x, transform.transform.rotation.w = 0.25, 1.0
    broadcaster.sendTransform(transform)
    extrinsics = TfExtrinsics(ros.node, "base_link")
    found = None
    deadline = time.monotonic() + 10
    while found is None and time.monotonic() < deadline:
        rclpy.spin_once(ros.node, timeout_sec=0.2)
        extrinsics._last_try.clear()
        found = extrinsics.lookup("camera_optical")
    np.testing.assert_allclose(found, [0.25, 0, 0, 0, 0, 0, 1])

