"""The real `ros2` command in the venv, on the colcon install of this package that scripts/setup_env.sh
builds (VENV/.vpr_ws), run through scripts/ros2_exec.sh as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

ROS2_EXEC = REPO / "scripts" / "ros2_exec.sh"
VENV = Path(sys.prefix)
WORKSPACE_INSTALL = VENV / ".vpr_ws" / "install"


@pytest.fixture
def env(ros_env) -> dict[str, str]:
    # the venv that runs the suite is the one whose tools and workspace are tested
    return dict(ros_env, VPR_VENV=str(VENV))


def ros2(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(ROS2_EXEC), "ros2", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"ros2 {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def test_interface_show_prints_our_message_fields(env):
    out = ros2(env, "interface", "show", "vpr_ros/msg/LoopClosure").stdout
    fields = {tuple(line.split()[:2]) for line in out.splitlines() if line and not line[0].isspace()}
    assert ("uint64", "query_id") in fields, out
    assert ("std_msgs/Header", "header") in fields, out


def test_launch_file_lists_its_arguments(env):
    out = ros2(env, "launch", "vpr_ros", "localize.launch.py", "--show-args").stdout
    arguments = {line.strip().strip("':") for line in out.splitlines() if line.strip().startswith("'")}
    assert {"map", "image_topics", "params_file"} <= arguments, out


def test_package_prefix_is_the_workspace_install(env):
    prefix = Path(ros2(env, "pkg", "prefix", "vpr_ros").stdout.strip())
    assert prefix == WORKSPACE_INSTALL / "vpr_ros", prefix
    assert (prefix / "share" / "vpr_ros" / "launch" / "localize.launch.py").is_file()
    # symlink install: the launch file is the source tree's, never a stale copy
    assert (prefix / "share" / "vpr_ros" / "launch" / "localize.launch.py").resolve() == \
        (REPO / "launch" / "localize.launch.py").resolve()


def test_missing_workspace_is_reported(ros_env, tmp_path):
    result = subprocess.run([str(ROS2_EXEC), "ros2", "pkg", "prefix", "vpr_ros"], cwd=REPO,
                            env=dict(ros_env, VPR_VENV=str(tmp_path / "no-venv")), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "make setup" in result.stderr
