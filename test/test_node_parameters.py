"""The node's parameters: the YAML file is what the node runs with, and bad values stop it at once
with a message naming the parameter."""

import importlib.util
import re
import time

import pytest
import rclpy
from rclpy.node import Node
from rclpy.parameter_client import AsyncParameterClient

from conftest import REPO, python_process

NODE = ["-m", "vpr_ros.localize_node", "--ros-args"]


def test_node_runs_with_the_values_of_the_yaml_file(ros_env, tmp_path):
    text = (REPO / "config" / "localize.yaml").read_text()
    text = re.sub(r"\n    qos_depth: 5\n", "\n    qos_depth: 7\n", text)
    text = re.sub(r'\n    mode: "localization"\n', '\n    mode: "slam"\n', text)
    params = tmp_path / "params.yaml"
    params.write_text(text)
    node_process = python_process([*NODE, "--params-file", str(params)], ros_env)
    rclpy.init()
    try:
        node = Node("parameter_checker")
        client = AsyncParameterClient(node, "vpr_localizer")
        deadline = time.monotonic() + 60
        while not client.services_are_ready() and time.monotonic() < deadline and node_process.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
        assert client.services_are_ready(), "the node never offered its parameter services"
        future = client.get_parameters(["qos_depth", "mode", "search.top_k", "loop.geometric"])
        rclpy.spin_until_future_complete(node, future, timeout_sec=30)
        values = future.result().values
    finally:
        rclpy.try_shutdown()
        node_process.terminate()
        output = node_process.communicate(timeout=30)[0]
    assert [values[0].integer_value, values[1].string_value, values[2].integer_value,
            values[3].string_value] == [7, "slam", 5, "none"], output


@pytest.mark.parametrize("overrides, named", [
    (["mode:=flying"], "mode"),
    (["search.top_k:=abc"], "search.top_k"),
    (["loop.min_score:=2.0", "mode:=slam"], "loop.min_score"),
    (["map.path:=/nonexistent/map"], "map.path"),
    ([], "map.path"),
    (["mode:=slam", "search.top_k:=50", "search.rerank_k:=10"], "search.top_k"),
    (["mode:=slam", "model.backend:=cuda"], "model.backend"),
    (["mode:=slam", "model.precision:=int8"], "model.calibration"),
    (["mode:=slam", "model.precision:=int4"], "model.precision"),
    (["mode:=slam", "model.local_branch:=/nonexistent/branch"], "model.local_branch"),
    (["mode:=slam", "model.local_branch:=checkpoints/lite0-nordland-local"],
     "model.local_branch"),
    (["mode:=slam", "search.local_weight:=1.5"], "search.local_weight"),
    (["mode:=slam", "image_topics:=['cam/image raw']"], "image_topics"),
    (["mode:=slam", "camera_info_topics:=['a/camera_info', 'b/camera_info']"], "camera_info_topics"),
    (["mode:=slam", "camera.intrinsics:=[0.0, 400.0, 320.0, 240.0]"], "camera.intrinsics"),
    (["mode:=slam", "frames.base_to_camera:=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]"], "frames.base_to_camera"),
    (["mode:=slam", "frames.base:=/base_link"], "frames.base"),
    (["mode:=slam", "image_topics:=['cam/{robot}/image_raw']"], "image_topics"),   # unknown substitution
])
def test_bad_parameter_stops_the_node_with_a_clear_message(ros_env, overrides, named):
    args = [*NODE] + [x for o in overrides for x in ("-p", o)]
    process = python_process(args, ros_env)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2, output
    assert f"parameter '{named}'" in output and "not started" in output, output
    assert len(output.strip().splitlines()) == 1, output  # one line, no traceback


def test_a_backend_that_is_not_installed_stops_the_node_in_one_line(ros_env):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the tensorrt backend is no refusal")
    process = python_process([*NODE, "-p", "mode:=slam", "-p", "model.backend:=tensorrt"], ros_env)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert "not started: the model or map could not be loaded: the tensorrt backend needs" in output, output
