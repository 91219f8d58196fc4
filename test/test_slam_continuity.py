"""A slam map outlives the process: a restart continues it (new session, ids after the old keyframes)
unless asked to start fresh, and a map that cannot be written costs keyframes, never localization,
and is reported as an ERROR in /diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import Image

from test_localize_node import RELIABLE, Listener, _output, _start_node
from vpr_core.data import open_dataset
from vpr_core.data.frame import Frame
from vpr_core.keyframes import KeyframeConfig
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapdb import MapDB, MapError

EVERY_FRAME = KeyframeConfig(0.0, 0.0, 1.0)  # each frame is a keyframe


@pytest.fixture(scope="module")
def images(data_dir) -> list[np.ndarray]:
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    return [f.rgb for f, _ in zip(dataset.queries, range(6))]


def _frames(images: list[np.ndarray], first_stamp_s: int) -> list[Frame]:
    return [Frame(index=i, rgb=im, name=f"f{i}", source=f"frame{first_stamp_s + i}", camera="cam",
                  stamp_ns=(first_stamp_s + i) * 10**9) for i, im in enumerate(images)]


def _slam(encoder, path, **kwargs) -> Localizer:
    return Localizer(LocalizerConfig(mode="slam", slam_map_path=str(path), keyframe=EVERY_FRAME, **kwargs), encoder)


def test_a_restart_continues_the_slam_map_and_a_fresh_start_keeps_it_aside(default_encoder, images, tmp_path):
    path = tmp_path / "slam"
    first = _slam(default_encoder, path)
    assert [r.keyframe_id for r in first.process(_frames(images[:3], 0))] == [0, 1, 2]
    first.slam_map.close()

    second = _slam(default_encoder, path)
    results = second.process(_frames(images[3:5], 100))
    assert [r.keyframe_id for r in results] == [3, 4]                        # ids are never reused
    assert {r.session_id for r in results} == {second.session_id} != {first.session_id}
    assert second.keyframe_count == 5 and list(tmp_path.iterdir()) == [path]  # nothing renamed aside
    second.slam_map.close()
    reloaded = MapDB.load(path, expected_fingerprint=default_encoder.fingerprint, verify=True)
    assert [r.source for r in reloaded.records(range(5))] == ["frame0", "frame1", "frame2", "frame100", "frame101"]
    reloaded.close()

    fresh = _slam(default_encoder, path, slam_fresh_start=True)
    aside = [p for p in tmp_path.iterdir() if p != path]
    assert len(aside) == 1 and aside[0].name.startswith("slam.") and not path.exists()
    assert [r.keyframe_id for r in fresh.process(_frames(images[5:], 200))] == [0]
    kept = MapDB.load(aside[0], verify=True)
    assert kept.size == 5                                                   # the old map is untouched
    kept.close()

    fresh.reset()                                                           # ~/reset: an empty map too
    assert len([p for p in tmp_path.iterdir() if p != path]) == 2 and fresh.keyframe_count == 0


def test_a_slam_map_of_another_encoder_is_refused_with_the_way_out(default_encoder, tmp_path):
    path = tmp_path / "slam"
    MapDB.create(path, fingerprint="another-encoder", encoder_config={}, bits=default_encoder.bits,
                 dim=default_encoder.dim).close()
    with pytest.raises(MapError, match="cannot be continued.*slam.fresh_start") as caught:
        _slam(default_encoder, path)
    assert "\n" not in str(caught.value)
    assert (path / "manifest.json").is_file()                              # refused, nothing moved


def test_keyframes_that_cannot_be_written_are_reported_and_frames_go_on(default_encoder, images, tmp_path):
    path = tmp_path / "slam"
    localizer = _slam(default_encoder, path)
    assert [r.keyframe_id for r in localizer.process(_frames(images[:2], 0))] == [0, 1]
    # A failing write as root too (chmod is no obstacle to root): the codes file becomes a directory.
    (path / "codes.npy").rename(tmp_path / "codes.npy")
    (path / "codes.npy").mkdir()
    results = localizer.process(_frames(images[2:4], 10))
    assert len(results) == 2 and all(r.keyframe_id is None for r in results)
    assert localizer.slam_write_failures == 2 and "slam keyframe not stored in" in localizer.slam_write_error
    assert "codes.npy" in localizer.slam_write_error and "\n" not in localizer.slam_write_error
    (path / "codes.npy").rmdir()
    (tmp_path / "codes.npy").rename(path / "codes.npy")
    assert [r.keyframe_id for r in localizer.process(_frames(images[4:5], 20))] == [2]  # the map recovers
    assert localizer.slam_write_error == "" and localizer.slam_write_failures == 2


def test_node_with_an_unwritable_slam_map_reports_an_error_and_keeps_answering(ros_env, images, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file: no directory can be made under it, not even by root")
    node = _start_node(ros_env, "mode:=slam", f"map.slam_path:={blocker / 'slam'}", "image_topics:=['/cam/image_raw']",
                       "keyframe.min_interval_s:=0.0")
    rclpy.init()
    try:
        listener = Listener()
        camera = listener.node.create_publisher(Image, "/cam/image_raw", RELIABLE)
        listener.spin_until(lambda: camera.get_subscription_count(), node)

        def pipeline() -> DiagnosticStatus | None:
            return listener.diagnostics[-1].status[0] if listener.diagnostics else None

        def done() -> bool:
            status = pipeline()
            return len(listener.matches) >= 2 and status is not None and status.level == DiagnosticStatus.ERROR

        for sec in range(1, 40):  # a frame sent while the worker is busy is replaced: send until answered
            if done():
                break
            rgb = images[sec % len(images)]
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3,
                        data=rgb.tobytes())
            msg.header.stamp.sec = sec
            camera.publish(msg)
            listener.spin_until(done, node, timeout=3.0)
    finally:
        rclpy.try_shutdown()
        node_out = _output(node)
    status = pipeline()
    assert len(listener.matches) >= 2, node_out
    assert status is not None and status.level == DiagnosticStatus.ERROR, node_out
    assert "slam keyframe not stored in" in status.message and "a_file" in status.message, status.message
    values = {kv.key: kv.value for kv in status.values}
    assert int(values["slam keyframes not stored"]) >= 1
