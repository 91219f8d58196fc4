"""qos auto, the node's default, through a real node process: a reliable camera delivers every frame
(a best-effort reader loses most VGA frames: bench/qos_loss.py), a best-effort camera that appears
after the node started is still received, and upstream loss is reported in /diagnostics."""

from __future__ import annotations

import json
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from conftest import python_process

FRAMES = 40


def _stream(ros_env, topic: str, reliability: str, width: int, height: int):
    spec = {"topic": topic, "reliability": reliability, "width": width, "height": height, "frames": FRAMES,
            "rate_hz": 10.0, "timeout_s": 90}
    return python_process(["test/peer_stream.py", json.dumps(spec)], ros_env)


def test_qos_auto_receives_every_reliable_frame_and_still_meets_a_best_effort_camera(ros_env):
    node = python_process(["-m", "vpr_ros.localize_node", "--ros-args", "-p", "mode:=slam",
                           "-p", "model.backend:=onnxruntime", "-p", "diagnostics_period_s:=0.5",
                           "-p", "image_topics:=['/reliable/image_raw', '/best_effort/image_raw']"], ros_env)
    rclpy.init()
    values: dict[str, str] = {}
    try:
        listener = Node("qos_listener")

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.endswith("pipeline"):
                    values.update({kv.key: kv.value for kv in status.values})

        listener.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        deadline = time.monotonic() + 120
        while "keyframes" not in values and time.monotonic() < deadline and node.poll() is None:
            rclpy.spin_once(listener, timeout_sec=0.1)  # the node is up and running
        cameras = [_stream(ros_env, "/reliable/image_raw", "reliable", 640, 480),
                   _stream(ros_env, "/best_effort/image_raw", "best_effort", 320, 240)]
        while any(c.poll() is None for c in cameras) and time.monotonic() < deadline:
            rclpy.spin_once(listener, timeout_sec=0.1)
        for _ in range(20):  # the diagnostics after the last frame
            rclpy.spin_once(listener, timeout_sec=0.1)
        outputs = [c.communicate(timeout=30)[0] for c in cameras]
    finally:
        rclpy.try_shutdown()
        if node.poll() is None:
            node.terminate()
        log = node.communicate(timeout=30)[0]
    assert all(f"SENT {FRAMES}" in out for out in outputs), f"{outputs}\n{log}"
    assert int(values["/reliable/image_raw received"]) == FRAMES, values
    assert int(values["/reliable/image_raw lost upstream"]) == 0
    # Best effort may lose any frame by design. What must hold: the camera that appeared late was met
    # (frames came), none came twice, and the loss estimate never claims more frames than were sent.
    received = int(values["/best_effort/image_raw received"])
    lost = int(values["/best_effort/image_raw lost upstream"])
    assert 0 < received <= FRAMES and received + lost <= FRAMES, values
    assert "/best_effort/image_raw: its publisher offers best effort only; subscribed best effort" in log
