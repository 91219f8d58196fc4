"""Proof of life of the vpr_localizer node: separate processes over loopback, real images, real model.

A camera process publishes real frames (raw and compressed) to the node process; this process
listens to what the node publishes and compares it with the offline pipeline on the same frames.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from conftest import REPO, python_process
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.cli_options import DEFAULT_CHECKPOINT
from vpr_core.data import Frame, open_dataset, open_source
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_ros.msg import PlaceMatchArray

PLACES = 40
# The node's default model; the node gets it from its parameter default.
ENCODER = EncoderConfig(checkpoint=str(DEFAULT_CHECKPOINT), backend="torch")
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def corridor(data_dir, tmp_path_factory):
    """The first PLACES places of the corridor set: a map of the reference images, and the queries."""
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    encoder = create_encoder(ENCODER)
    refs = [f for f in dataset.database][:PLACES]
    map_dir = tmp_path_factory.mktemp("corridor") / "map"
    build_map(refs, map_dir, encoder, BuildConfig())
    queries = [data_dir / "corridor" / "query" / f.name for f in list(dataset.queries)[:PLACES]]
    return {"map": map_dir, "queries": queries, "dataset": dataset, "encoder": encoder}


def _start_node(ros_env, *params: str):
    args = ["-m", "vpr_ros.localize_node", "--ros-args", "-p", "qos:=reliable", "-p", "model.backend:=torch",
            "-p", "diagnostics_period_s:=0.2"]
    for p in params:
        args += ["-p", p]
    return python_process(args, ros_env)


def _camera(ros_env, images, topic, fmt, period_ns=100_000_000, loop_topic=""):
    spec = {"images": [str(p) for p in images], "topic": topic, "format": fmt, "loop_topic": loop_topic,
            "answer_topic": "/vpr_localizer/matches", "period_ns": period_ns, "timeout_s": 120}
    return python_process(["test/peer_camera.py", json.dumps(spec)], ros_env)


def _run_camera(node, camera) -> dict:
    """The camera's answers once it has sent every frame (the node's log in the message otherwise)."""
    try:
        camera_out = camera.communicate(timeout=600)[0]
    finally:
        node_out = _output(node)
    lines = [line for line in camera_out.splitlines() if line.startswith("ANSWERS ")]
    assert camera.returncode == 0 and lines, f"camera:\n{camera_out}\nnode:\n{node_out}"
    answers = json.loads(lines[-1][len("ANSWERS "):])
    return {"matches": {int(k): v for k, v in answers["matches"].items()}, "loops": answers["loops"]}


class Listener:
    def __init__(self) -> None:
        self.node = Node("listener")
        self.matches: dict[int, PlaceMatchArray] = {}
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(PlaceMatchArray, "/vpr_localizer/matches", self._on_matches, RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def _on_matches(self, msg: PlaceMatchArray) -> None:
        self.matches.setdefault(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, msg)

    def spin_until(self, done, *processes, timeout=240.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break
            rclpy.spin_once(self.node, timeout_sec=0.05)


def _output(process) -> str:
    if process.poll() is None:
        process.terminate()
    return process.communicate(timeout=30)[0]


def _decoded(path: Path, fmt: str) -> np.ndarray:
    """The RGB image the node sees after the camera's encoding."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if fmt != "raw":
        bgr = cv2.imdecode(cv2.imencode(f".{fmt}", bgr)[1], cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("fmt, topic", [("raw", "/cam/image_raw"), ("jpeg", "/cam/image_raw/compressed")])
def test_node_matches_equal_the_offline_pipeline(ros_env, corridor, fmt, topic):
    node = _start_node(ros_env, f"map.path:={corridor['map']}", f"image_topics:=['{topic}']")
    matches = _run_camera(node, _camera(ros_env, corridor["queries"], topic, fmt))["matches"]
    assert len(matches) == PLACES

    offline = Localizer(LocalizerConfig(map_path=str(corridor["map"]), encoder=ENCODER), corridor["encoder"])
    dataset, correct_node, correct_offline = corridor["dataset"], 0, 0
    for i, (stamp, msg) in enumerate(sorted(matches.items())):
        frame = Frame(index=i, rgb=_decoded(corridor["queries"][i], fmt), name=str(i), source=topic,
                      camera=topic, stamp_ns=stamp)
        (expected,) = offline.process([frame])
        assert msg["ids"] == [m.place_id for m in expected.matches[:5]]
        np.testing.assert_allclose(msg["scores"], [m.score for m in expected.matches[:5]], atol=1e-5)
        assert msg["accepted"] == expected.accepted and msg["source"] == topic
        assert 0 < msg["latency_ms"] <= msg["rtt_ms"]  # the node's part of the camera's round trip
        positives = dataset.positives(i)
        correct_node += int(msg["ids"][0] in positives)
        correct_offline += int(expected.matches[0].place_id in positives)
    assert correct_node == correct_offline
    assert correct_node / PLACES > 0.5, f"node Recall@1 {correct_node / PLACES:.2f} on the corridor subset"


def test_slam_mode_publishes_loop_closures_for_true_revisits(ros_env, data_dir):
    sequence = data_dir / "rtabmap_loop"
    images = sorted((sequence / "images").glob("*.jpg"))
    truth = {tuple(map(int, line.split(","))) for line in (sequence / "loop_pairs.csv").read_text().split()[1:]}
    node = _start_node(ros_env, "mode:=slam", "image_topics:=['/cam/image_raw']",
                       "keyframe.min_interval_s:=0.0", "keyframe.max_similarity:=1.0")
    answers = _run_camera(node, _camera(ros_env, images, "/cam/image_raw", "raw", period_ns=1_000_000_000,
                                        loop_topic="/vpr_localizer/loop_closures"))
    assert len(answers["matches"]) == len(images)
    pairs = [tuple(pair) for pair in answers["loops"]]
    true_pairs = [p for p in pairs if p in truth]
    assert len(true_pairs) >= 5, f"loop closures {pairs}"
    assert len(true_pairs) >= 0.8 * len(pairs), f"false loop closures: {sorted(set(pairs) - truth)}"
    assert all(q > m for q, m in pairs)


GARBAGE = [
    ("raw", dict(height=4, width=4, encoding="rgb8", step=12, data=b"\x00" * 10)),         # too few bytes
    ("raw", dict(height=4, width=4, encoding="rgb8", step=8, data=b"\x00" * 32)),          # step < row
    ("raw", dict(height=4, width=4, encoding="xyz9", step=12, data=b"\x00" * 48)),         # unknown encoding
    ("raw", dict(height=0, width=0, encoding="rgb8", step=0, data=b"")),                  # no pixels
    ("compressed", dict(format="jpeg", data=b"\xff\xd8 this is not a jpeg")),             # undecodable
    ("compressed", dict(format="png", data=b"")),                                         # empty
]


def test_garbage_messages_are_counted_and_the_node_goes_on(ros_env, corridor):
    """Also checks the debug image of the good frame that follows the garbage."""
    node = _start_node(ros_env, f"map.path:={corridor['map']}", "publish_debug_image:=true",
                       "image_topics:=['/cam/image_raw', '/cam/image_raw/compressed']")
    rclpy.init()
    try:
        listener = Listener()
        debug: list[Image] = []
        listener.node.create_subscription(Image, "/vpr_localizer/debug_image", debug.append, RELIABLE)
        raw = listener.node.create_publisher(Image, "/cam/image_raw", RELIABLE)
        compressed = listener.node.create_publisher(CompressedImage, "/cam/image_raw/compressed", RELIABLE)
        listener.spin_until(lambda: raw.get_subscription_count() and compressed.get_subscription_count(), node)
        for kind, fields in GARBAGE:
            (raw if kind == "raw" else compressed).publish((Image if kind == "raw" else CompressedImage)(**fields))
        bgr = cv2.imread(str(corridor["queries"][3]))
        good = Image(height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8", step=bgr.shape[1] * 3,
                     data=bgr.tobytes())
        good.header.stamp.sec = 77

        def malformed() -> int:
            if not listener.diagnostics:
                return -1
            values = {kv.key: kv.value for kv in listener.diagnostics[-1].status[0].values}
            return int(values["/cam/image_raw malformed"]) + int(values["/cam/image_raw/compressed malformed"])

        def done() -> bool:
            return malformed() == len(GARBAGE) and 77 * 10**9 in listener.matches and bool(debug)

        for _ in range(24):  # resend the good frame until answered: one sent while busy is replaced
            if done():
                break
            raw.publish(good)
            listener.spin_until(done, node, timeout=5.0)
    finally:
        rclpy.try_shutdown()
        node_out = _output(node)
    assert malformed() == len(GARBAGE), node_out
    assert 77 * 10**9 in listener.matches, "a good frame after the garbage got no answer:\n" + node_out
    assert listener.diagnostics[-1].status[0].level == DiagnosticStatus.WARN  # malformed input seen
    assert "malformed image skipped" in node_out
    panel = np.frombuffer(debug[-1].data, np.uint8).reshape(debug[-1].height, debug[-1].width, 3)
    assert debug[-1].header.stamp.sec == 77 and debug[-1].encoding == "rgb8" and panel.shape == (240 + 44, 320, 3)
    assert (panel[240:] < 128).any()  # the decision is written under the query
