"""The vpr_localizer node on a Milvus map (a Milvus Lite file served by `vpr map serve`), fed real
Corridor frames from rosbag2 files: it publishes the matches the offline pipeline finds in the map
directory the collection was pushed from; with the database gone it goes on answering (unlocalized)
and says so in /diagnostics; with the database back it localizes again."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from conftest import REPO, python_process
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.cli_options import DEFAULT_CHECKPOINT
from vpr_core.data import Frame, open_dataset, open_source
from vpr_core.data.bag_writer import ImageStream, stamps_at, write_bag
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapstore.transfer import push
from vpr_ros.msg import PlaceMatchArray

PLACES, QUERIES, LATE = 40, 20, 6
TOPIC = "/camera/image_raw"
ENCODER = EncoderConfig(checkpoint=str(DEFAULT_CHECKPOINT), backend="onnxruntime")
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
START_NS = 1_700_000_000 * 1_000_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "vpr_core.mapstore.command", "serve", str(db), "--port",
                                str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    assert line.startswith("serving"), line + process.stdout.read()
    return process


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.terminate()
    return process.communicate(timeout=30)[0]


@pytest.fixture(scope="module")
def corridor(data_dir, tmp_path_factory):
    """A map directory of the first Corridor reference frames, pushed into a Milvus Lite file, and
    three bags of query frames (before, during and after the database outage)."""
    root = tmp_path_factory.mktemp("milvus_node")
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    encoder = create_encoder(ENCODER)
    build_map(list(dataset.database)[:PLACES], root / "map", encoder, BuildConfig())
    push(root / "map", f"milvus-lite:{root / 'fleet.db'}/corridor").close()
    queries = [f.rgb for f in list(dataset.queries)[:QUERIES]]
    bags = {name: write_bag(root / name, [ImageStream(TOPIC, images, stamps_at(4.0, len(images), start_ns=start))])
            for name, images, start in (("queries", queries, START_NS), ("outage", queries[:LATE], START_NS + 10**12),
                                        ("back", queries[:LATE], START_NS + 2 * 10**12))}
    return {"root": root, "encoder": encoder, "bags": bags}


class Listener:
    def __init__(self) -> None:
        self.node = Node("milvus_listener")
        self.matches: dict[int, PlaceMatchArray] = {}
        self.pipeline: list[str] = []
        self.node.create_subscription(PlaceMatchArray, "/vpr_localizer/matches", self._on_matches, RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_matches(self, msg: PlaceMatchArray) -> None:
        self.matches[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        self.pipeline += [s.message for s in msg.status if s.name.endswith(": pipeline")]

    def spin_until(self, done, node: subprocess.Popen, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline and node.poll() is None:
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return done()


def _play(env, bag) -> None:
    player = subprocess.run([sys.executable, "-m", "vpr_ros.bag_player", str(bag), "--rate", "0.5", "--reliable",
                             "--wait-for-subscribers", "60"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert player.returncode == 0, player.stdout + player.stderr


def _offline(corridor, bag) -> dict[int, tuple[list[int], list[float], bool]]:
    """What the pipeline finds for the bag's frames in the map directory."""
    localizer = Localizer(LocalizerConfig(map_path=str(corridor["root"] / "map"), encoder=ENCODER), corridor["encoder"])
    out = {}
    for i, frame in enumerate(open_source(f"rosbag:{bag}?topics={TOPIC}")):
        (r,) = localizer.process([Frame(index=i, rgb=frame.rgb, name=frame.name, source=TOPIC, camera=TOPIC,
                                        stamp_ns=frame.stamp_ns)])
        out[frame.stamp_ns] = ([m.place_id for m in r.matches[:5]], [m.score for m in r.matches[:5]], r.accepted)
    return out


def _same_matches(got: dict[int, PlaceMatchArray], want: dict) -> None:
    assert set(got) >= set(want)
    for stamp, (ids, scores, accepted) in want.items():
        msg = got[stamp]
        assert [m.place_id for m in msg.matches] == ids
        np.testing.assert_allclose([m.score for m in msg.matches], scores, atol=1e-5)
        assert msg.accepted == accepted


def test_node_on_a_milvus_map_matches_the_directory_and_survives_an_outage(ros_env, corridor):
    port = _free_port()
    server = _serve(corridor["root"] / "fleet.db", port)
    rclpy.init()
    listener = Listener()
    node = python_process(["-m", "vpr_ros.localize_node", "--ros-args", "-p", "qos:=reliable",
                           "-p", "model.backend:=onnxruntime", "-p", "diagnostics_period_s:=0.2",
                           "-p", f"map.path:=milvus://127.0.0.1:{port}/corridor?timeout=2",
                           "-p", f"image_topics:=['{TOPIC}']"], ros_env)
    try:
        _play(ros_env, corridor["bags"]["queries"])
        want = _offline(corridor, corridor["bags"]["queries"])
        assert listener.spin_until(lambda: set(listener.matches) >= set(want), node), \
            f"{len(set(listener.matches) & set(want))} of {len(want)} answered; node:\n{_stop(node)[-3000:]}"
        _same_matches(listener.matches, want)
        assert sum(a for _, _, a in want.values()) > 0

        _stop(server)  # the database goes away mid-run
        _play(ros_env, corridor["bags"]["outage"])
        outage = set(_offline(corridor, corridor["bags"]["outage"]))
        # A search waits for the URI's timeout before it gives up, so frames that arrive meanwhile are
        # dropped (counted) by the latest-frame slot: some outage frames are answered, all unlocalized.
        assert listener.spin_until(lambda: set(listener.matches) & outage and any(
            "map database unreachable" in m for m in listener.pipeline), node), _stop(node)
        answered = set(listener.matches) & outage
        assert all(not listener.matches[s].matches and not listener.matches[s].accepted for s in answered)

        server = _serve(corridor["root"] / "fleet.db", port)  # back again
        listener.pipeline.clear()
        _play(ros_env, corridor["bags"]["back"])
        back = _offline(corridor, corridor["bags"]["back"])
        assert listener.spin_until(lambda: max(back) in listener.matches, node), _stop(node)
        # the first frames may still meet the client reconnecting; the ones answered from the map are exact
        localized = {s: w for s, w in back.items() if s in listener.matches and listener.matches[s].matches}
        assert max(back) in localized
        _same_matches(listener.matches, localized)
        assert listener.spin_until(lambda: listener.pipeline and "unreachable" not in listener.pipeline[-1], node)
        assert node.poll() is None
    finally:
        _stop(node)
        _stop(server)
        listener.node.destroy_node()
        rclpy.try_shutdown()
