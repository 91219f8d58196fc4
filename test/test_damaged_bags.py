"""Bags cut short, as a killed recorder or a full disk leaves them: real rosbag2 bags (mcap, sqlite3)
written with rosbags from corridor frames, cut at several points; the frames before the damage are
read exactly, with a warning naming their count and the last stamp; a bag cut inside its header is
refused with one line."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2.storage_mcap import McapReader

from conftest import REPO
from vpr_core.data import DataError, open_source
from vpr_core.data.bag_writer import ImageStream, PoseStream, load_frames, stamps_at, write_bag

COUNT = 40  # 120x160 rgb8 frames: about 2.3 MB, three 1 MiB mcap chunks
CUTS = {"minus_100_bytes": -100, "half": 0.5, "ninety_percent": 0.9}


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def intact(request, data_dir, tmp_path_factory) -> dict:
    """An intact bag (images and odometry) and the frames read from it."""
    storage = request.param
    images = load_frames(data_dir / "corridor" / "query", COUNT)
    stamps = stamps_at(10, COUNT)
    poses = np.zeros((COUNT, 7))
    poses[:, 0] = np.arange(COUNT)
    poses[:, 6] = 1.0
    bag = write_bag(tmp_path_factory.mktemp(storage) / "bag",
                    [ImageStream("/cam/image_raw", images, stamps), PoseStream("/odom", poses, stamps)],
                    storage=storage)
    source = open_source(f"rosbag:{bag}")
    assert source.damage == ""
    frames = list(source)
    assert len(frames) == COUNT
    return {"storage": storage, "bag": bag, "frames": frames,
            "file": next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))}


def cut_copy(intact: dict, dest: Path, keep: int) -> Path:
    """A copy of the intact bag whose storage file keeps only its first ``keep`` bytes."""
    bag = dest / "cut"
    shutil.copytree(intact["bag"], bag)
    (bag / intact["file"].name).write_bytes(intact["file"].read_bytes()[:keep])
    return bag


def mcap_frames_before(file: Path, keep: int) -> int:
    """Image messages of the chunks that lie whole in the first ``keep`` bytes, from the intact file's
    own chunk index (read by rosbags, not by the code under test)."""
    reader = McapReader(file)
    reader.open()
    try:
        image_ids = {c.id for c in reader.connections if c.topic == "/cam/image_raw"}
        return sum(count for chunk in reader.chunks if chunk.chunk_start_offset + chunk.chunk_length <= keep
                   for cid, count in chunk.channel_count.items() if cid in image_ids)
    finally:
        reader.close()


@pytest.mark.parametrize("cut", CUTS)
def test_frames_before_the_damage_are_read_exactly(intact, tmp_path, caplog, cut) -> None:
    size = intact["file"].stat().st_size
    keep = size + CUTS[cut] if CUTS[cut] < 0 else int(size * CUTS[cut])
    bag = cut_copy(intact, tmp_path, keep)
    with caplog.at_level(logging.WARNING, logger="vpr_core.data.rosbag"):
        source = open_source(f"rosbag:{bag}")
    frames = list(source)
    n = len(frames)
    assert n == len(source)
    if intact["storage"] == "mcap":
        assert n == mcap_frames_before(intact["file"], keep)
    else:  # SQLite pages fill in time order: a cut at a fraction keeps about that fraction of rows
        assert 0.8 * keep / size * COUNT <= n <= COUNT
    assert 0 < n <= COUNT and (n < COUNT or cut == "minus_100_bytes")
    for got, want in zip(frames, intact["frames"][:n]):
        assert got.stamp_ns == want.stamp_ns and got.camera == want.camera
        np.testing.assert_array_equal(got.rgb, want.rgb)
    # poses are read from the intact part too (the last frame's may lack the odometry after it)
    np.testing.assert_array_equal([f.pose for f in frames[:-1]], [f.pose for f in intact["frames"][: n - 1]])
    last = intact["frames"][n - 1].stamp_ns
    stamp = f"{last // 10**9}.{last % 10**9:09d}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [source.damage]
    assert f"read the {n} frames of /cam/image_raw before the damage" in source.damage
    assert f"the last at bag time {stamp} s" in source.damage
    assert intact["file"].name in source.damage and "to repair it for good: `" in source.damage
    assert "\n" not in source.damage


def test_a_bag_cut_inside_its_header_is_refused_in_one_line(intact, tmp_path) -> None:
    bag = cut_copy(intact, tmp_path, 20)
    with pytest.raises(DataError) as err:
        open_source(f"rosbag:{bag}")
    message = str(err.value)
    assert message.startswith(f"bag {bag} could not be opened") and "\n" not in message
    assert "nothing is readable before the damage" in message


def test_a_bag_without_metadata_is_read_whole(intact, tmp_path) -> None:
    bag = tmp_path / "bag"
    shutil.copytree(intact["bag"], bag)
    (bag / "metadata.yaml").unlink()
    source = open_source(f"rosbag:{bag}")
    frames = list(source)
    assert [f.stamp_ns for f in frames] == [f.stamp_ns for f in intact["frames"]]
    np.testing.assert_array_equal(frames[-1].rgb, intact["frames"][-1].rgb)
    assert "metadata.yaml is missing" in source.damage and f"read the {COUNT} frames" in source.damage
    assert f"ros2 bag reindex {bag} -s {intact['storage']}" in source.damage


@pytest.mark.parametrize("intact", ["mcap"], indirect=True)  # the reader is shared: one end-to-end run
def test_replay_of_a_cut_bag_processes_the_frames_before_the_damage(intact, tmp_path) -> None:
    keep = intact["file"].stat().st_size // 2
    bag = cut_copy(intact, tmp_path, keep)
    out = tmp_path / "replay.jsonl"
    run = subprocess.run([sys.executable, "-m", "vpr_core.cli", "replay", "--bag", str(bag), "--mode", "slam",
                          "--topics", "/cam/image_raw", "--out", str(out), "--backend", "torch", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    n = mcap_frames_before(intact["file"], keep)
    assert f"bag {bag} is damaged" in run.stderr and f"read the {n} frames" in run.stderr
    assert run.stdout.startswith(f"{n} frames in ")
    assert len(out.read_text().splitlines()) == n


def test_the_bag_player_plays_the_frames_before_the_damage(intact, tmp_path, ros_env) -> None:
    """What a robotics engineer replays into the node: the player publishes what precedes the cut."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from conftest import python_process

    bag = cut_copy(intact, tmp_path, intact["file"].stat().st_size - 100)
    expected = len(open_source(f"rosbag:{bag}"))
    stamps: set[int] = set()
    rclpy.init()
    try:
        listener = rclpy.create_node("cut_bag_listener")
        listener.create_subscription(Image, "/cam/image_raw",
                                     lambda m: stamps.add(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec),
                                     QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        player = python_process(["-m", "vpr_ros.bag_player", str(bag), "--rate", "0", "--reliable",
                                 "--topics", "/cam/image_raw", "--wait-for-subscribers", "60"], ros_env)
        while player.poll() is None:
            rclpy.spin_once(listener, timeout_sec=0.05)
        for _ in range(20):
            rclpy.spin_once(listener, timeout_sec=0.05)
        output = player.communicate(timeout=30)[0]
    finally:
        rclpy.try_shutdown()
    assert player.returncode == 0, output
    assert f"bag {bag} is damaged" in output and "to repair it for good" in output
    assert stamps == {f.stamp_ns for f in intact["frames"][:expected]}
