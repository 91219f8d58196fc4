"""Offline replay against the node on the same frames: real bags written with rosbags from corridor
frames, a map built from one bag (raw images, odometry, NavSatFix, sqlite3) and the other replayed
(JPEG CompressedImage, mcap) by `vpr replay` and, through the bag player, by the node."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader

from conftest import REPO, python_process
from vpr_core.data import open_dataset, open_source
from vpr_core.data.bag_writer import GpsStream, ImageStream, PoseStream, stamps_at, write_bag
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapdb import MapDB
from vpr_core.replay import result_record
from vpr_core.sequence_filter import SequenceFilterConfig
from vpr_ros.msg import PlaceMatchArray

FRAMES = 16
TOPIC = "/cam/image_raw/compressed"


def _vpr(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "vpr_core.cli", *args, "--backend", "torch", "--threads", "1"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _finish(process) -> str:
    if process.poll() is None:
        process.terminate()
    return process.communicate(timeout=30)[0]


@pytest.fixture(scope="module")
def bags(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    refs = [f.rgb for f, _ in zip(dataset.database, range(FRAMES))]
    queries = [f.rgb for f, _ in zip(dataset.queries, range(FRAMES))]
    stamps = stamps_at(10, FRAMES)
    poses = np.zeros((FRAMES, 7))
    poses[:, 0] = 0.5 * np.arange(FRAMES)  # half a metre per frame along x
    poses[:, 6] = 1.0
    fixes = np.stack([59.9 + 1e-5 * np.arange(FRAMES), np.full(FRAMES, 10.7)], axis=1)
    map_bag = write_bag(root / "map_bag", [ImageStream("/cam/image_raw", refs, stamps),
                                           PoseStream("/odom", poses, stamps), GpsStream("/fix", fixes, stamps)],
                        storage="sqlite3")
    query_bag = write_bag(root / "query_bag", [ImageStream(TOPIC, queries, stamps, encoding="jpeg")], storage="mcap")
    _vpr("build-map", "--source", f"rosbag:{map_bag}", "--out", str(root / "map"))
    return {"root": root, "map": root / "map", "query_bag": query_bag, "dataset": dataset, "poses": poses,
            "fixes": fixes}


def test_a_map_from_a_bag_keeps_odometry_and_fixes(bags):
    mapdb = MapDB.load(bags["map"])
    records = mapdb.records(range(FRAMES))
    assert mapdb.size == FRAMES
    np.testing.assert_allclose([r.pose for r in records], bags["poses"])
    np.testing.assert_allclose([r.latlon for r in records], bags["fixes"])


def test_replay_writes_json_lines_and_a_bag_of_our_messages(bags):
    out = bags["root"] / "replay.jsonl"
    out_bag = bags["root"] / "results"
    _vpr("replay", "--bag", str(bags["query_bag"]), "--map", str(bags["map"]), "--out", str(out),
         "--out-bag", str(out_bag))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == FRAMES and all(r["camera"] == TOPIC for r in records)
    dataset = bags["dataset"]
    correct = sum(r["matches"][0]["place_id"] in dataset.positives(i) for i, r in enumerate(records))
    assert correct >= FRAMES // 2, f"replay Recall@1 {correct}/{FRAMES} on the first corridor places"
    with AnyReader([out_bag]) as reader:
        kinds = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    assert kinds["/vpr_localizer/matches"] == ("vpr_ros/msg/PlaceMatchArray", FRAMES)


def _filtered_offline(bags, encoder, stamps=None) -> dict[int, dict]:
    """The sequence filter's records, as `vpr replay --filter` writes them, over the query bag's
    frames (only those with the given stamps: the frames the node processed)."""
    localizer = Localizer(LocalizerConfig(map_path=str(bags["map"]), filter=SequenceFilterConfig(enabled=True)),
                          encoder)
    frames = [f for f in open_source(f"rosbag:{bags['query_bag']}") if stamps is None or f.stamp_ns in stamps]
    return {f.stamp_ns: json.loads(json.dumps(result_record(r))) for f in frames for r in localizer.process([f])}


@pytest.mark.parametrize("sequence_filter", [False, True], ids=["single-frame", "sequence-filter"])
def test_replay_equals_the_node_on_the_same_bag(bags, ros_env, shipped_encoder, sequence_filter):
    """The node's answers equal the offline pipeline's frame by frame. With the sequence filter on,
    the filter's belief depends on every frame it saw, and a busy node may skip a frame (it keeps
    the newest): the reference is then the offline filter over exactly the frames the node answered;
    `vpr replay --filter` itself equals the offline filter over the whole bag."""
    out = bags["root"] / f"replay-node-compare-{sequence_filter}.jsonl"
    _vpr("replay", "--bag", str(bags["query_bag"]), "--map", str(bags["map"]), "--out", str(out),
         *(["--filter"] if sequence_filter else []))
    offline = {r["stamp_ns"]: r for r in map(json.loads, out.read_text().splitlines())}
    if sequence_filter:
        whole = _filtered_offline(bags, shipped_encoder)
        assert [r["matches"][0]["place_id"] for r in offline.values()] == \
            [r["matches"][0]["place_id"] for r in whole.values()]
        np.testing.assert_allclose([r["probability"] for r in offline.values()],
                                   [r["probability"] for r in whole.values()], atol=1e-4)

    answers: dict[int, PlaceMatchArray] = {}
    rclpy.init()
    node = player = None
    try:
        listener = Node("replay_listener")
        listener.create_subscription(
            PlaceMatchArray, "/vpr_localizer/matches",
            lambda msg: answers.setdefault(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, msg),
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        node = python_process(["-m", "vpr_ros.localize_node", "--ros-args", "-p", f"map.path:={bags['map']}",
                               "-p", f"image_topics:=['{TOPIC}']", "-p", "qos:=reliable",
                               "-p", "model.backend:=torch", "-p", f"filter.enabled:={str(sequence_filter).lower()}"],
                              ros_env)
        # A quarter of the bag's rate leaves the node time for every frame on a busy 2-core machine.
        player = python_process(["-m", "vpr_ros.bag_player", str(bags["query_bag"]), "--rate", "0.25",
                                 "--reliable", "--wait-for-subscribers", "120"], ros_env)
        while player.poll() is None and node.poll() is None:
            rclpy.spin_once(listener, timeout_sec=0.05)
        for _ in range(60):  # the last frame's answer
            rclpy.spin_once(listener, timeout_sec=0.05)
    finally:
        rclpy.try_shutdown()
        outputs = [_finish(p) for p in (node, player) if p is not None]
    assert player.returncode == 0, "\n".join(outputs)
    assert len(answers) >= FRAMES // 2, f"{len(answers)} answers:\n" + "\n".join(outputs)
    if sequence_filter:
        offline = _filtered_offline(bags, shipped_encoder, set(answers))
    for stamp, msg in answers.items():
        expected = offline[stamp]["matches"]
        assert [m.place_id for m in msg.matches] == [m["place_id"] for m in expected]
        np.testing.assert_allclose([m.score for m in msg.matches], [m["score"] for m in expected], atol=1e-5)
        assert msg.filtered == offline[stamp]["filtered"] == sequence_filter
        if sequence_filter:
            # float32 in the message; the node's and the replay's scores agree to ~1e-6 (see atol above)
            assert msg.probability == pytest.approx(offline[stamp]["probability"], abs=1e-4)
            assert [m.place_id for m in msg.raw_matches] == [m["place_id"] for m in offline[stamp]["raw_matches"]]
            assert msg.accepted == offline[stamp]["accepted"]
        best = msg.matches[0]
        assert best.has_pose and best.pose.position.x == pytest.approx(0.5 * best.place_id)
        assert best.latitude == pytest.approx(59.9 + 1e-5 * best.place_id)
