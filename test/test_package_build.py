"""The package as colcon builds it in a ROS workspace: the install tree that `make setup` builds
(`scripts/build_workspace.sh`: `colcon build --symlink-install` of this repository in `.venv/.vpr_ws`, the
workspace every node test runs from) holds what `ros2 run` and `ros2 launch` need, and imports from
there. Built once by the setup, not again here: the message generation is half a minute of CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def install_tree() -> Path:
    ws = Path(sys.prefix) / ".vpr_ws"
    assert (ws / "src" / "vpr_ros").resolve() == REPO, f"{ws} is not a workspace of this repository: run make setup"
    return ws / "install"


def test_executables_launch_and_config_are_installed(install_tree):
    prefix = install_tree / "vpr_ros"
    for name in ("localize_node", "bag_player"):
        exe = prefix / "lib" / "vpr_ros" / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable"
    assert (prefix / "share" / "vpr_ros" / "launch" / "localize.launch.py").is_file()
    yamls = sorted((prefix / "share" / "vpr_ros" / "config").glob("*.yaml"))
    assert [p.name for p in yamls if p.name == "localize.yaml"], yamls
    # the node's default model.checkpoint resolves here after `source install/setup.bash`
    assert (prefix / "share" / "vpr_ros" / "checkpoints" / "lite0-nordland" / "heads.safetensors").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "vpr_ros").is_file()


def test_messages_and_modules_import_from_the_install_tree(install_tree, tmp_path):
    code = ("import vpr_ros, vpr_core, vpr_ros.localize_node\n"
            "from vpr_ros.msg import PlaceMatch, PlaceMatchArray, LoopClosure\n"
            "m = PlaceMatchArray(matches=[PlaceMatch(place_id=3)])\n"
            "print(vpr_ros.msg.__file__, vpr_core.__file__, m.matches[0].place_id)\n")
    result = subprocess.run(
        ["bash", "-c", f"source '{install_tree / 'setup.bash'}' && '{sys.executable}' -c \"$0\"", code],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    msg_file, core_file, place_id = result.stdout.split()
    assert Path(msg_file).is_relative_to(install_tree) and Path(core_file).is_relative_to(install_tree)
    assert place_id == "3"
