"""Offline replay against the node on the same frames: real bags written with rosbags from corridor
frames, a map built from one bag (raw images, odometry, NavSatFix, sqlite3) and the other replayed
(JPEG CompressedImage, mcap) by `vpr replay` and, through the bag player, by the node."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from conftest import REPO, python_process
from vpr_core.data import open_dataset, open_source
from vpr_core.data.bag_writer import GpsStream, ImageStream, PoseStream, stamps_at, write_bag
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapdb import MapDB
from vpr_core.replay import result_record
from vpr_core.sequence_filter import SequenceFilterConfig

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


def _offline(bags, encoder, sequence_filter: bool) -> dict[int, dict]:
    """The records of the offline pipeline, as `vpr replay` writes them, over the query bag's frames."""
    localizer = Localizer(LocalizerConfig(map_path=str(bags["map"]),
                                          filter=SequenceFilterConfig(enabled=sequence_filter)), encoder)
    frames = list(open_source(f"rosbag:{bags['query_bag']}"))
    return {f.stamp_ns: json.loads(json.dumps(result_record(r))) for f in frames for r in localizer.process([f])}


def test_replay_writes_json_lines_and_a_bag_of_our_messages(bags, default_encoder):
    """Every frame's record equals the offline pipeline's on the same frame."""
    out = bags["root"] / "replay.jsonl"
    out_bag = bags["root"] / "results"
    _vpr("replay", "--bag", str(bags["query_bag"]), "--map", str(bags["map"]), "--out", str(out),
         "--out-bag", str(out_bag))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == FRAMES and all(r["camera"] == TOPIC for r in records)
    offline = _offline(bags, default_encoder, sequence_filter=False)
    assert [r["stamp_ns"] for r in records] == list(offline)
    for record in records:
        expected = offline[record["stamp_ns"]]
        assert [m["place_id"] for m in record["matches"]] == [m["place_id"] for m in expected["matches"]]
        np.testing.assert_allclose([m["score"] for m in record["matches"]],
                                   [m["score"] for m in expected["matches"]], atol=1e-5)
        assert record["accepted"] == expected["accepted"]
    with AnyReader([out_bag]) as reader:
        kinds = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    assert kinds["/vpr_localizer/matches"] == ("vpr_ros/msg/PlaceMatchArray", FRAMES)


def _node_answers(bags, ros_env, sequence_filter: bool) -> dict[int, dict]:
    """The node's answer to every frame of the query bag: test/peer_camera.py sends the bag's messages
    unchanged, each after the node answered the one before, so the node sees every frame in order."""
    node = python_process(["-m", "vpr_ros.localize_node", "--ros-args", "-p", f"map.path:={bags['map']}",
                           "-p", f"image_topics:=['{TOPIC}']", "-p", "qos:=reliable",
                           "-p", "model.backend:=torch", "-p", f"filter.enabled:={str(sequence_filter).lower()}"],
                          ros_env)
    spec = {"bag": str(bags["query_bag"]), "topic": TOPIC, "answer_topic": "/vpr_localizer/matches",
            "timeout_s": 120}
    camera = python_process(["test/peer_camera.py", json.dumps(spec)], ros_env)
    try:
        camera_out = camera.communicate(timeout=600)[0]
    finally:
        node_out = _finish(node)
    lines = [line for line in camera_out.splitlines() if line.startswith("ANSWERS ")]
    assert camera.returncode == 0 and lines, f"camera:\n{camera_out}\nnode:\n{node_out}"
    return {int(k): v for k, v in json.loads(lines[-1][len("ANSWERS "):])["matches"].items()}


@pytest.mark.parametrize("sequence_filter", [False, True], ids=["single-frame", "sequence-filter"])
def test_replay_equals_the_node_on_the_same_bag(bags, ros_env, default_encoder, sequence_filter):
    """The node's answer to every frame equals `vpr replay`'s. In lock-step the node sees the frames
    the replay sees, in the same order, so the sequence filter's belief is the same too; `vpr replay
    --filter` itself equals the offline filter over the whole bag."""
    out = bags["root"] / f"replay-node-compare-{sequence_filter}.jsonl"
    _vpr("replay", "--bag", str(bags["query_bag"]), "--map", str(bags["map"]), "--out", str(out),
         *(["--filter"] if sequence_filter else []))
    offline = {r["stamp_ns"]: r for r in map(json.loads, out.read_text().splitlines())}
    if sequence_filter:
        whole = _offline(bags, default_encoder, sequence_filter=True)
        assert [r["matches"][0]["place_id"] for r in offline.values()] == \
            [r["matches"][0]["place_id"] for r in whole.values()]
        np.testing.assert_allclose([r["probability"] for r in offline.values()],
                                   [r["probability"] for r in whole.values()], atol=1e-4)

    answers = _node_answers(bags, ros_env, sequence_filter)
    assert len(offline) == FRAMES and sorted(answers) == sorted(offline)
    for stamp, got in answers.items():
        expected = offline[stamp]
        assert got["ids"] == [m["place_id"] for m in expected["matches"]]
        np.testing.assert_allclose(got["scores"], [m["score"] for m in expected["matches"]], atol=1e-5)
        assert got["filtered"] == expected["filtered"] == sequence_filter
        assert got["accepted"] == expected["accepted"]
        if sequence_filter:
            # float32 in the message; the node's and the replay's scores agree to ~1e-6 (see atol above)
            assert got["probability"] == pytest.approx(expected["probability"], abs=1e-4)
            assert got["raw_ids"] == [m["place_id"] for m in expected["raw_matches"]]
        best = got["ids"][0]
        assert got["poses_x"][0] == pytest.approx(0.5 * best)
        assert got["latitudes"][0] == pytest.approx(59.9 + 1e-5 * best)
        assert 0 < got["latency_ms"] <= got["rtt_ms"]
