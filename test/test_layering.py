"""vpr_core must never import ROS: the node, the offline replay and the CLI share it without ROS."""

import ast

from conftest import REPO

ROS_MODULES = ("rclpy", "rcl_interfaces", "rosidl_runtime_py", "launch", "launch_ros", "vpr_ros",
               "ament_index_python", "message_filters", "cv_bridge", "tf2_ros")


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.endswith("_msgs") or top.endswith("_srvs")


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield str(node.args[0].value)


def test_vpr_core_imports_no_ros_package():
    files = sorted((REPO / "vpr_core").rglob("*.py"))
    assert files, "vpr_core has no Python files"
    offenders = [f"{f.relative_to(REPO)}: {m}" for f in files for m in _imports(f) if _is_ros(m)]
    assert not offenders, "vpr_core imports ROS:\n" + "\n".join(offenders)


def test_the_check_catches_a_ros_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom sensor_msgs.msg import Image\nimportlib.import_module('rclpy')\n")
    assert [m for m in _imports(bad) if _is_ros(m)] == ["sensor_msgs.msg", "rclpy"]


# Python libraries the ROS layer imports, by their rosdep key.
ROSDEP_KEYS = {"numpy": "python3-numpy", "scipy": "python3-scipy", "cv2": "python3-opencv", "yaml": "python3-yaml"}


def test_package_xml_lists_every_ros_package_the_code_imports():
    """rosdep installs what package.xml names: a ROS package the code imports and package.xml omits
    breaks the node on a robot whose workspace was set up with `rosdep install`."""
    import xml.etree.ElementTree as ET

    manifest = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for e in manifest if e.tag in ("depend", "exec_depend", "build_depend")}
    files = sorted((REPO / "vpr_ros").glob("*.py")) + sorted((REPO / "vpr_core").rglob("*.py")) \
        + [REPO / "launch" / "localize.launch.py"]
    needed = set()
    for f in files:
        for module in _imports(f):
            top = module.split(".")[0]
            if _is_ros(module) and top != "vpr_ros":
                needed.add(top)
            elif top in ROSDEP_KEYS:
                needed.add(ROSDEP_KEYS[top])
    assert "rclpy" in needed and "launch_ros" in needed  # the scan sees the node and the launch file
    assert not needed - declared, f"package.xml lacks {sorted(needed - declared)}"
